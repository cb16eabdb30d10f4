"""Capture/restore of a learner rank's state with a plain torch optimizer (ZeRO-0 fp32). The ZeRO-2 path (fp32
master partitions) is exercised end to end by tests/rlhf/test_trainer.py::test_resume_is_exact."""

from __future__ import annotations

import pytest
import torch

from rlhf import learner_state
from rlhf.critic import ValueHead


def _setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    critic = ValueHead(3, 4)
    opt = torch.optim.AdamW([{"params": model.parameters()}, {"params": critic.parameters(), "lr": 0.5}], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    return model, critic, opt, sched


def _step(model, critic, opt, sched) -> None:
    x = torch.randn(4, 3)
    loss = model(x).square().sum() + critic(x[None]).square().sum() + critic(x[None]).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_round_trip_continues_exactly(tmp_path) -> None:
    model, critic, opt, sched = _setup(0)
    for _ in range(2):
        _step(model, critic, opt, sched)
    tensors, doc = learner_state.capture(opt, sched, critic, {"version": 2})
    learner_state.save(tmp_path, 0, tensors, doc)
    expected = [p.detach().clone() for p in model.parameters()]
    _step(model, critic, opt, sched)
    after_straight = [p.detach().clone() for p in (*model.parameters(), *critic.parameters())]

    model2, critic2, opt2, sched2 = _setup(1)  # different init, fresh optimizer
    with torch.no_grad():
        for p, e in zip(model2.parameters(), expected, strict=True):
            p.copy_(e)  # the adapters come from the checkpoint's policy folder in the real learner
    loaded, doc2 = learner_state.load(tmp_path, 0)
    learner_state.restore(opt2, sched2, critic2, loaded, doc2)
    assert doc2["version"] == 2
    _step(model2, critic2, opt2, sched2)  # same RNG state restored -> same x
    for a, b in zip(after_straight, (*model2.parameters(), *critic2.parameters()), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_missing_rank_and_mismatched_partitions_are_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="rank 1"):
        learner_state.load(tmp_path, 1)
    _, critic, opt, sched = _setup(0)
    tensors, doc = learner_state.capture(opt, sched, critic, {})
    doc["fp32_partitions"] = 2
    with pytest.raises(ValueError, match=r"same learner\.zero_stage"):
        learner_state.restore(opt, sched, critic, tensors, doc)
