"""Train a reward model (Bradley-Terry pairs) or a per-dimension scorer / safety classifier (labels).

    python jobs/train_reward.py --config configs/reward_pairs_minilm.yaml [a.b=value ...]

Writes a standard HF folder (safetensors) + eval.json (held-out pair accuracy beside the length-only baseline)
+ TensorBoard logs to output_dir. Use it in RL as `{name: reward_model, weight: 1, options: {path: <output_dir>}}`.
"""

from __future__ import annotations

import argparse
import json
import sys

from rewards.training import RewardTrainingConfig, train_reward_model
from rlhf.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset in configs/reward_*.yaml")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. epochs=1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=RewardTrainingConfig)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = train_reward_model(cfg)
    report = json.loads((out / "eval.json").read_text())
    print(json.dumps({"output_dir": str(out), **report.get("held_out", {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
