"""Pooling and top-k renormalisation of the router, as pure functions."""

from __future__ import annotations

import math

import pytest
import torch

from policies.config import RouterConfig
from policies.router import PersonaRouter, pool_prompt, replay_selection, top_k_renormalise


def test_mean_and_last_pooling_skip_padding() -> None:
    hidden = torch.arange(12, dtype=torch.float).view(2, 3, 2)  # (B=2, P=3, d=2)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    torch.testing.assert_close(pool_prompt(hidden, mask, "mean"), torch.tensor([[3.0, 4.0], [8.0, 9.0]]))
    torch.testing.assert_close(pool_prompt(hidden, mask, "last"), torch.tensor([[4.0, 5.0], [10.0, 11.0]]))
    with pytest.raises(ValueError, match="empty prompt"):
        pool_prompt(hidden, torch.zeros(2, 3), "mean")


def test_top_k_renormalise() -> None:
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    out = top_k_renormalise(probs, 2)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 2 / 3, 1 / 3]))
    assert (out[1] > 0).sum() == 2 and out[1, 0] == pytest.approx(2 / 3)
    assert top_k_renormalise(probs, None) is probs
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        top_k_renormalise(probs, 0)


def test_router_regulariser_is_scaled_and_differentiable() -> None:
    torch.manual_seed(0)
    router = PersonaRouter(8, 4, RouterConfig(top_k=2, aux_loss="load_balance", aux_coef=0.5))
    out = router(torch.randn(5, 8))
    selected = (out.weights > 0).float()  # (5, 4), two per row
    share = selected.sum(0) / 10
    assert out.aux_loss.item() == pytest.approx(0.5 * 4 * (share * out.probs.mean(0)).sum().item())
    out.aux_loss.backward()
    assert router.mlp[-1].weight.grad.abs().sum() > 0


def test_replay_selection_keeps_the_rollouts_experts() -> None:
    logits = torch.tensor([[0.40, 0.35, 0.25], [0.50, 0.30, 0.20]]).log().requires_grad_()
    probs = logits.softmax(-1)  # the rows above sum to 1, so these are they
    used = torch.tensor([[0.0, 0.6, 0.4], [0.7, 0.3, 0.0]])  # row 0: the rollout ranked experts 1, 2 first
    weights = replay_selection(logits.log_softmax(-1), used)
    expected = torch.tensor([[0.0, 0.35 / 0.60, 0.25 / 0.60], [0.5 / 0.8, 0.3 / 0.8, 0.0]])
    torch.testing.assert_close(weights, expected)
    top2 = top_k_renormalise(probs, 2)
    torch.testing.assert_close(replay_selection(logits.log_softmax(-1), top2)[1], top2[1])
    weights[0, 1].backward()  # the router still learns through the kept probabilities
    assert logits.grad[0, 1] > 0 and logits.grad[0, 2] < 0 and abs(logits.grad[0, 0]) < 1e-6  # 0 but for rounding


def test_replay_selection_stays_finite_where_the_used_experts_probabilities_underflow() -> None:
    """The learner re-routes with a gap of 200 nats to the experts the rollout used: their fp32 probabilities are 0,
    and renormalising probabilities would give 0 / 0; the log-probs still order them (e^-1 : 1)."""
    log_probs = torch.tensor([[0.0, -200.0, -201.0, -300.0]]).log_softmax(-1)
    assert log_probs.exp()[0, 1:].eq(0).all()
    weights = replay_selection(log_probs, torch.tensor([[0.0, 0.5, 0.5, 0.0]]))
    e = math.exp(-1.0)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 1 / (1 + e), e / (1 + e), 0.0]]))
