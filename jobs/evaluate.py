"""Evaluate a persona policy against its base: trait expression per expert, multiple choice, reasoning
retention, win rate under a reward, safety (refusals and over-refusals), routing per situation category.

    python jobs/evaluate.py policy=runs/X/policy output_dir=runs/X/eval [multiple_choice=[my_mc.jsonl] ...]

Writes report.json, report.md, trait_directions.png and routing_heatmap.png.
"""

from __future__ import annotations

import argparse
import json
import sys

from policies.evaluation_job import EvaluationConfig, run_evaluation
from rlhf.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="optional YAML preset")
    parser.add_argument("overrides", nargs="*", help="key=value settings, e.g. policy=runs/x/policy")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=EvaluationConfig)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = run_evaluation(cfg)
    report = json.loads((out / "report.json").read_text())
    right = sum(r["right_direction"] for r in report.get("trait_directions", []))
    print(json.dumps({"output_dir": str(out), "trait_right_direction": right, "win_rate": report.get("win_rate")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
