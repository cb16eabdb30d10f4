"""Stage 2: train the persona router on labelled situations (target trait poles), report held-out accuracy.

    python jobs/train_router.py --config configs/router_smollm2_cpu.yaml [a.b=value ...]

Writes output_dir/policy (loads with PersonaFusePolicy.from_pretrained), router_report.json (held-out top-1/top-2
accuracy, KL, confusion) and router_confusion.png.
"""

from __future__ import annotations

import argparse
import json
import sys

from policies.router_training import RouterTrainingConfig, train_router
from rlhf.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset, e.g. configs/router_smollm2_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. epochs=100")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=RouterTrainingConfig)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = train_router(cfg)
    report = json.loads((out / "router_report.json").read_text())
    held = report["heldout"]
    print(json.dumps({"output_dir": str(out), "heldout_top1": held["top1"], "heldout_top2": held["top2"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
