"""GRPO post-training of the PersonaFuse policy (router + persona experts) on Ray: vLLM rollouts, DeepSpeed learners.

    python jobs/grpo.py --config configs/smollm2_cpu_grpo.yaml [a.b=value ...]
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/grpo.py --config configs/smollm2_cpu_grpo.yaml

The whole config is validated before Ray starts. Without a running cluster a local Ray is started.
"""

from __future__ import annotations

import argparse
import sys

from rlhf.config import ConfigError, load_config
from rlhf.trainer import fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset in configs/ (defaults apply to what it leaves out)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. run.steps=4")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = fit(cfg)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
