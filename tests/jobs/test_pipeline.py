"""jobs/pipeline.py as users run it: a bad stage setting stops it before any stage runs (the pipeline itself:
tests/rlhf/test_pipeline.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bad_stage_setting_exits_before_any_stage(tmp_path) -> None:
    cmd = [sys.executable, "jobs/pipeline.py", "--config", "configs/pipeline_smollm2_cpu.yaml",
           f"output_dir={tmp_path / 'p'}", "adapters.epochz=1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "epochz" in done.stderr and not (tmp_path / "p").exists()
