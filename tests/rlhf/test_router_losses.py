"""Router regularisers against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.router_losses import load_balance_loss, router_anchor_kl, router_aux_loss, routing_entropy


def test_entropy_hand_values() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert routing_entropy(probs).item() == pytest.approx(math.log(2) / 2)


def test_load_balance_is_one_when_uniform_and_e_when_collapsed() -> None:
    uniform = torch.full((4, 4), 0.25)
    assert load_balance_loss(uniform, uniform).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0, 0, 0]] * 4)
    assert load_balance_loss(collapsed, collapsed).item() == pytest.approx(4.0)


def test_load_balance_hand_value() -> None:
    # E = 2; slots: expert 0 chosen twice, expert 1 once -> f = (2/3, 1/3); P = mean probs = (0.7, 0.3)
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    expected = 2 * (2 / 3 * 0.7 + 1 / 3 * 0.3)
    assert load_balance_loss(probs, weights).item() == pytest.approx(expected)


def test_aux_loss_dispatch() -> None:
    probs = torch.tensor([[0.2, 0.8]])
    assert router_aux_loss("none", probs, probs).item() == 0.0
    assert router_aux_loss("entropy", probs, probs).item() == pytest.approx(-routing_entropy(probs).item())
    with pytest.raises(ValueError, match="choose none, load_balance or entropy"):
        router_aux_loss("gini", probs, probs)


def test_router_anchor_kl_by_hand() -> None:
    ref = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    logits = torch.tensor([[0.25, 0.75], [0.9, 0.1]]).log().requires_grad_()
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + 0.0) / 2  # row 2 equals its reference
    kl = router_anchor_kl(logits.softmax(-1), ref)
    assert kl.item() == pytest.approx(expected)
    assert router_anchor_kl(ref, ref).item() == pytest.approx(0.0, abs=1e-7)
    kl.backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.125, 0.125], [0.0, 0.0]]))  # (p - ref) / B
