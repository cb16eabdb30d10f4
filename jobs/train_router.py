"""Stage 2: train the persona router on labelled situations (target trait poles), report held-out accuracy.

    python jobs/train_router.py --config configs/router_smollm2_cpu.yaml [a.b=value ...]

Writes output_dir/policy (loads with PersonaFusePolicy.from_pretrained), router_report.json (held-out top-1/top-2
accuracy, KL, confusion) and router_confusion.png.
"""

from __future__ import annotations

import json
import sys

from policies.router_training import RouterTrainingConfig, train_router
from rlhf.cli import run_config_job


def summary(out) -> dict:
    held = json.loads((out / "router_report.json").read_text())["heldout"]
    return {"heldout_top1": held["top1"], "heldout_top2": held["top2"]}


def main(argv: list[str] | None = None) -> int:
    return run_config_job(RouterTrainingConfig, train_router, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
