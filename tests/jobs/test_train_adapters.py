"""jobs/train_adapters.py as users run it: a config error stops it before any model loads (the stage itself:
tests/policies/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bad_config_exits_before_loading_a_model() -> None:
    cmd = [sys.executable, "jobs/train_adapters.py", "--config", "configs/adapters_smollm2_cpu.yaml", "lr=-1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "lr" in done.stderr and "configs/adapters_smollm2_cpu.yaml" in done.stderr
