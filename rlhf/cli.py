"""The command line shared by jobs/grpo.py and jobs/ppo.py: --config, overrides, --resume."""

from __future__ import annotations

import argparse
import sys

from rlhf.config import ConfigError, load_config
from rlhf.trainer import fit


def run_rl_job(algorithm: str, description: str, argv: list[str] | None = None) -> int:
    """Validates the whole config (before Ray starts), runs the job, prints the run folder. Returns the exit code."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset in configs/ (defaults apply to what it leaves out)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue the run folder's newest checkpoint (or the checkpoints/step_N folder given)",
    )
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. run.steps=4")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, defaults={"algorithm": {"name": algorithm}})
        if cfg.algorithm.name != algorithm:
            raise ConfigError(
                f"{args.config}: algorithm.name is {cfg.algorithm.name!r} but this job runs {algorithm!r}; "
                f"use jobs/{cfg.algorithm.name}.py"
            )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = fit(cfg, resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0
