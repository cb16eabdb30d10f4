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
