"""Train a reward model (Bradley-Terry pairs) or a per-dimension scorer / safety classifier (labels).

    python jobs/train_reward.py --config configs/reward_pairs_minilm.yaml [a.b=value ...]

Writes a standard HF folder (safetensors) + eval.json (held-out pair accuracy beside the length-only baseline)
+ TensorBoard logs to output_dir. Use it in RL as `{name: reward_model, weight: 1, options: {path: <output_dir>}}`.
"""

from __future__ import annotations

import json
import sys

from rewards.training import RewardTrainingConfig, train_reward_model
from rlhf.cli import run_config_job


def summary(out) -> dict:
    return json.loads((out / "eval.json").read_text()).get("held_out", {})


def main(argv: list[str] | None = None) -> int:
    return run_config_job(RewardTrainingConfig, train_reward_model, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
