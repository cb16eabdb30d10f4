"""jobs/train_reward.py as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.exemplars import preference_pairs

ROOT = Path(__file__).parents[2]


def test_config_errors_exit_before_training() -> None:
    cmd = [sys.executable, "jobs/train_reward.py", "--config", "configs/reward_pairs_minilm.yaml", "epoch=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "did you mean 'epochs'" in done.stderr


@pytest.mark.slow
def test_trains_and_prints_held_out_accuracy(tmp_path, tiny_encoder_dir) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_pairs(seed=5)[:200]))
    cmd = [
        sys.executable, "jobs/train_reward.py", "--config", "configs/reward_pairs_minilm.yaml", f"data.train={data}",
        f"model={tiny_encoder_dir}", f"output_dir={tmp_path / 'out'}", "epochs=1", "max_length=64",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["pairs"] > 0 and 0 <= summary["accuracy"] <= 1 and "length_baseline" in summary
    assert (tmp_path / "out" / "eval.json").is_file()
