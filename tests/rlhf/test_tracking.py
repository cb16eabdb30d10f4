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


def test_a_resume_rewrites_the_steps_after_its_checkpoint_in_tensorboard_too(tmp_path) -> None:
    """Steps 1-3 logged, then a resume from the step-1 checkpoint logs 2-3 again with other values: TensorBoard
    shows each step once, with the rerun's value, as metrics.jsonl does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = Tracker(tmp_path, 3, EXPERTS)
    for step in (1, 2, 3):
        first.log(step, row(0.1 * step))
    first.writer.close()
    resumed = Tracker(tmp_path, 3, EXPERTS, start_step=1)
    for step in (2, 3):
        resumed.log(step, row(1.0 * step))
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = [(e.step, round(e.value, 3)) for e in events.Scalars("reward/mean")]
    assert scalars == [(1, 0.1), (2, 2.0), (3, 3.0)]
    assert [json.loads(x)["reward/mean"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        0.1,
        2.0,
        3.0,
    ]


def test_non_finite_metric_stops_the_run(tmp_path) -> None:
    tracker = Tracker(tmp_path, 1, EXPERTS)
    with pytest.raises(FloatingPointError, match="kl"):
        tracker.log(1, {**row(0.1), "kl": float("nan")})


def test_evaluations_write_their_own_file_replies_and_plot(tmp_path) -> None:
    tracker = Tracker(tmp_path, 2, EXPERTS)
    replies = [{"prompt": "p", "category": "grief", "reply": "r", "reward": 0.5}]
    for step, reward in ((0, 0.1), (1, 0.3), (2, 0.2)):
        if step:
            tracker.log(step, row(reward))
        tracker.log_eval(step, {"eval/reward/mean": reward, "eval/reward/std": 0.2}, replies * (step + 1))
    pngs = tracker.close()
    evals = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["eval/reward/mean"]) for e in evals] == [(0, 0.1), (1, 0.3), (2, 0.2)]
    assert len((tmp_path / "eval/step_2.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "eval/step_0.jsonl").read_text()) == replies[0]
    assert "eval.png" in {p.name for p in pngs}
    assert all("eval" not in key for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) for key in r)
    Tracker(tmp_path, 2, EXPERTS, start_step=1).close()  # a resume runs step 2 again: its rows go
    assert [json.loads(x)["step"] for x in (tmp_path / "eval.jsonl").read_text().splitlines()] == [0, 1]
    with pytest.raises(FloatingPointError, match="eval/reward/mean"):
        Tracker(tmp_path, 2, EXPERTS).log_eval(3, {"eval/reward/mean": float("inf")}, [])
