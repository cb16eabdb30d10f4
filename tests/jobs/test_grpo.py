"""jobs/grpo.py as users run it: a config error stops it before Ray starts (the full run: test_demo.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_config_error_exits_before_ray() -> None:
    cmd = [sys.executable, "jobs/grpo.py", "--config", "configs/tiny_test.yaml", "rollout.smaples=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2
    assert "did you mean 'samples_per_prompt'" in done.stderr and "configs/tiny_test.yaml" in done.stderr
    assert "Ray" not in done.stderr  # it stopped before starting Ray


def test_a_missing_reward_model_stops_the_job_before_ray(tmp_path) -> None:
    missing = tmp_path / "no_such_reward_model"
    bad = f"{{name: reward_model, weight: 1, options: {{path: {missing}}}}}"
    rewards = f"rewards.components=[{{name: relevance, weight: 1}}, {bad}]"
    cmd = [sys.executable, "jobs/grpo.py", "--config", "configs/tiny_test.yaml", rewards, f"run.output_dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode != 0
    assert f"rewards.components[1] (reward_model): reward model '{missing}': no HF model folder" in done.stderr
    assert "Started a local Ray instance" not in done.stderr and not (tmp_path / "tiny").exists()
