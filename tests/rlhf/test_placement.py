"""Placement on a simulated 2-node Ray cluster (real Ray; the only thing simulated is the second host)."""

from __future__ import annotations

import json
import socket
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


def test_a_stale_cluster_record_is_ignored(tmp_path, monkeypatch) -> None:
    """`ray start` leaves /tmp/ray/ray_current_cluster behind when its head dies; only a head that answers counts."""
    from rlhf.placement import local_cluster_address

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert local_cluster_address() is None  # no record
    (tmp_path / "ray").mkdir()
    record = tmp_path / "ray" / "ray_current_cluster"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        live = f"127.0.0.1:{listener.getsockname()[1]}"
        record.write_text(live)
        assert local_cluster_address() == live
    record.write_text(live)  # the same port, now closed: a dead head
    assert local_cluster_address() is None
    record.write_text("garbage")
    assert local_cluster_address() is None
