"""jobs/evaluate.py as users run it (the evaluation itself: tests/policies/test_evaluation_job.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_missing_policy_is_a_config_error() -> None:
    done = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "output_dir=x"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2 and "policy: Field required" in done.stderr
