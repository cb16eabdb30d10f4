"""jobs/ppo.py as users run it (the 2-step PPO run: tests/rlhf/test_trainer.py::test_two_ppo_steps)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_a_grpo_preset_is_refused_before_ray() -> None:
    cmd = [sys.executable, "jobs/ppo.py", "--config", "configs/smollm2_cpu_grpo.yaml", "algorithm.name=grpo"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "use jobs/grpo.py" in done.stderr
