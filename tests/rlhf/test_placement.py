"""Placement on a simulated 2-node Ray cluster (real Ray; the only thing simulated is the second host)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_split_placement_spans_two_nodes_and_a_step_completes(tiny_model_dir, tmp_path) -> None:
    cmd = [sys.executable, "-m", "tests.rlhf.two_node_check", str(tiny_model_dir), str(tmp_path)]
    env = {**__import__("os").environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"nodes"')))
    assert result["cluster_nodes"] == 2
    assert len(result["nodes"]) == 2  # learners and rollout actor landed on both nodes
    assert result["steps"] == 1
