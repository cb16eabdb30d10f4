"""jobs/grpo.py as users run it: config errors before Ray starts, and `ray job submit` against a real head."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config_error_exits_before_ray() -> None:
    cmd = [sys.executable, "jobs/grpo.py", "--config", "configs/tiny_test.yaml", "rollout.smaples=3"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "did you mean 'samples_per_prompt'" in done.stderr and "configs/tiny_test.yaml" in done.stderr
    assert "Ray" not in done.stderr and time.perf_counter() - start < 60


@pytest.mark.slow
def test_ray_job_submit_end_to_end(tiny_model_dir, tmp_path) -> None:
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port, dashboard = free_port(), free_port()
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        submit = [
            str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
            "python", "jobs/grpo.py", "--config", "configs/tiny_test.yaml",
            f"policy.base_model={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}",
        ]  # fmt: skip
        for _ in range(60):  # the dashboard takes a few seconds to accept jobs
            assert head.poll() is None, "the Ray head exited; see `ray start` output"
            done = subprocess.run(submit, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
            if "Connection refused" not in done.stderr + done.stdout and "Failed to connect" not in done.stderr:
                break
            time.sleep(2)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        rows = [json.loads(x) for x in (tmp_path / "runs/tiny/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
    finally:
        head.terminate()
        head.wait(timeout=60)
