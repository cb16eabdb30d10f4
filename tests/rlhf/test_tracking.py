from __future__ import annotations

import json

import pytest

from rlhf.tracking import Tracker

EXPERTS = ("openness_high", "openness_low")


def row(reward: float) -> dict[str, float]:
    return {"reward/mean": reward, "kl": 0.01, "router/weight/openness_high": 0.3, "router/weight/openness_low": 0.7}


def test_metrics_tensorboard_and_plots(tmp_path) -> None:
    tracker = Tracker(tmp_path, 2, EXPERTS)
    tracker.log(1, row(0.1))
    tracker.log(2, row(0.4))
    pngs = tracker.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and lines[1]["reward/mean"] == 0.4
    assert {p.name for p in pngs} == {"reward.png", "kl.png", "router_usage.png"}
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert list((tmp_path / "tensorboard").iterdir())


def test_non_finite_metric_stops_the_run(tmp_path) -> None:
    tracker = Tracker(tmp_path, 1, EXPERTS)
    with pytest.raises(FloatingPointError, match="kl"):
        tracker.log(1, {**row(0.1), "kl": float("nan")})
