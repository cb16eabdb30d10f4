"""jobs/synthesize_persona_data.py as users run it: a config error stops it before any model loads (the stage itself:
tests/policies/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bad_config_exits_before_loading_a_model() -> None:
    cmd = [
        sys.executable,
        "jobs/synthesize_persona_data.py",
        "--config",
        "configs/persona_data_smollm2_cpu.yaml",
        "temprature=1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert (
        done.returncode == 2
        and "did you mean 'temperature'" in done.stderr
        and "configs/persona_data_smollm2_cpu.yaml" in done.stderr
    )
