"""The whole PersonaFuse recipe: persona data -> adapter SFT -> router -> RL -> evaluation, resumable.

    python jobs/pipeline.py --config configs/pipeline_smollm2_cpu.yaml [a.b=value ...]

Each stage writes its own folder under output_dir and is skipped when it exists; all stage configs are validated
before the first stage runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from rlhf.config import ConfigError, load_config
from rlhf.pipeline import PipelineConfig, run_pipeline, stage_configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset, e.g. configs/pipeline_smollm2_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=PipelineConfig)
        stage_configs(cfg)  # every stage validated before anything runs
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(run_pipeline(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
