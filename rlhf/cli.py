"""The command lines the jobs share: --config YAML + ``a.b=value`` overrides, validated before any work starts.

``run_rl_job`` serves jobs/grpo.py and jobs/ppo.py (plus --resume); ``run_config_job`` every other config-driven job.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies.config import FrozenConfig
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
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        # argparse hands "--resume run.steps=16" the override as its optional value: it is an override.
        args.overrides, args.resume = [args.resume, *args.overrides], "latest"
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


def run_config_job(
    schema: type[FrozenConfig],
    run: Callable[[Any], Path],
    summary: Callable[[Path], dict],
    description: str,
    argv: list[str] | None = None,
    validate: Callable[[Any], object] | None = None,
) -> int:
    """Parses --config + overrides into ``schema`` and runs ``validate(cfg)`` if given (any error: exit 2 with the
    message on stderr, before work starts), then ``run(cfg)``; prints ``{"output_dir": ..., **summary(output_dir)}``
    as one JSON line."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset in configs/")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. epochs=1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=schema)
        if validate is not None:
            validate(cfg)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = run(cfg)
    print(json.dumps({"output_dir": str(out), **summary(out)}))
    return 0
