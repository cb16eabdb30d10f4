"""Evaluate a persona policy against its base: trait expression per expert, multiple choice, reasoning
retention, win rate under a reward, safety (refusals and over-refusals), routing per situation category.

    python jobs/evaluate.py policy=runs/X/policy output_dir=runs/X/eval [multiple_choice=[my_mc.jsonl] ...]

Writes report.json, report.md, trait_directions.png and routing_heatmap.png.
"""

from __future__ import annotations

import json
import sys

from policies.evaluation_job import EvaluationConfig, run_evaluation
from rlhf.cli import run_config_job


def summary(out) -> dict:
    report = json.loads((out / "report.json").read_text())
    right = {m: sum(r["right_direction"] for r in rows) for m, rows in report.get("trait_directions", {}).items()}
    return {"trait_right_direction": right, "win_rate": report.get("win_rate")}


def main(argv: list[str] | None = None) -> int:
    return run_config_job(EvaluationConfig, run_evaluation, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
