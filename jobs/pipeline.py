"""The whole PersonaFuse recipe: persona data -> adapter SFT -> router -> RL -> evaluation, resumable.

    python jobs/pipeline.py --config configs/pipeline_smollm2_cpu.yaml [a.b=value ...]

Each stage writes its own folder under output_dir and is skipped when it exists; all stage configs are validated
before the first stage runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf.cli import run_config_job
from rlhf.pipeline import PipelineConfig, run_pipeline, stage_configs


def run(cfg: PipelineConfig):
    summary = run_pipeline(cfg)
    print(json.dumps(summary), file=sys.stderr)
    return Path(cfg.output_dir)


def summary(out) -> dict:
    return json.loads((out / "pipeline_summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    return run_config_job(PipelineConfig, run, summary, __doc__, argv, validate=stage_configs)


if __name__ == "__main__":
    sys.exit(main())
