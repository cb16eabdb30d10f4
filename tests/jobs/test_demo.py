"""jobs/demo.py end to end: a real Ray head, `ray job submit` of jobs/grpo.py, results shown, Ray stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_demo_submits_the_job_and_shows_results(tiny_model_dir, tmp_path) -> None:
    cmd = [sys.executable, "jobs/demo.py", "--config", "configs/tiny_test.yaml",
           f"policy.base_model={tiny_model_dir}", f"run.output_dir={tmp_path}",
           "run.eval_every=2", "data.eval_prompts=2"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "ray job submit" in done.stdout and "succeeded" in done.stdout + done.stderr
    assert "before RL" in done.stdout and "after RL" in done.stdout and "reward.png" in done.stdout
    assert "held-out reward" in done.stdout and "step 0 " in done.stdout and "step 2 " in done.stdout
    assert "replies cut off at 8 tokens: step 1 " in done.stdout and "cut off)" in done.stdout
    [run_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("demo-")]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    probe = subprocess.run(["pgrep", "-f", "ray start --head --block"], capture_output=True, text=True)
    assert probe.stdout.strip() == ""  # the head was stopped


def test_bad_config_fails_before_ray() -> None:
    done = subprocess.run([sys.executable, "jobs/demo.py", "run.stpes=2"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "did you mean 'steps'" in done.stderr
