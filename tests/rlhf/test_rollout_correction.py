"""Rollout importance weights against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.rollout_correction import mismatch_kl, rollout_is_weights

# One reply of 3 tokens and one of 2 (+ padding). Token ratios rho = pi_old / pi_rollout: 1.5, 0.5, 3 and 1.2, 0.25.
OLD = torch.log(torch.tensor([[0.6, 0.2, 0.9], [0.6, 0.1, 0.5]]))
ROLLOUT = torch.log(torch.tensor([[0.4, 0.4, 0.3], [0.5, 0.4, 0.5]]))
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(
    ("mode", "clip_min", "expected", "bounded"),
    [
        ("truncate", None, [[1.5, 0.5, 2.0], [1.2, 0.25, 0.0]], 1 / 5),
        ("truncate", 0.4, [[1.5, 0.5, 2.0], [1.2, 0.4, 0.0]], 2 / 5),
        ("mask", None, [[1.5, 0.5, 0.0], [1.2, 0.25, 0.0]], 1 / 5),
        ("mask", 0.4, [[1.5, 0.5, 0.0], [1.2, 0.0, 0.0]], 2 / 5),
    ],
)
def test_token_level_hand_values(mode: str, clip_min: float | None, expected: list, bounded: float) -> None:
    weights, metrics = rollout_is_weights(OLD, ROLLOUT, MASK, level="token", mode=mode, clip_max=2.0, clip_min=clip_min)
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert metrics["rollout_is/bounded_frac"].item() == pytest.approx(bounded)
    assert metrics["rollout_is/weight_mean"].item() == pytest.approx(sum(map(sum, expected)) / 5)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("truncate", [[2.0] * 3, [0.3, 0.3, 0.0]]), ("mask", [[0.0] * 3, [0.3, 0.3, 0.0]])],
)
def test_sequence_level_hand_values(mode: str, expected: list) -> None:
    """Reply 1: rho = 1.5 * 0.5 * 3 = 2.25 > 2; reply 2: 1.2 * 0.25 = 0.3 (its padding token does not count)."""
    weights, metrics = rollout_is_weights(OLD, ROLLOUT, MASK, level="sequence", mode=mode, clip_max=2.0)
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert metrics["rollout_is/bounded_frac"].item() == pytest.approx(1 / 2)  # one of two replies


def test_mismatch_kl_hand_value_and_zero_when_engines_agree() -> None:
    rhos = [1.5, 0.5, 3.0, 1.2, 0.25]
    expected = sum(r - 1 - math.log(r) for r in rhos) / 5
    assert mismatch_kl(OLD, ROLLOUT, MASK).item() == pytest.approx(expected, rel=1e-5)
    weights, metrics = rollout_is_weights(OLD, OLD.clone(), MASK, level="token", mode="truncate", clip_max=2.0)
    torch.testing.assert_close(weights, MASK.float())
    assert metrics["rollout_is/mismatch_kl"].item() == 0.0
    assert metrics["rollout_is/bounded_frac"].item() == 0.0


def test_padding_never_reaches_the_weights() -> None:
    """NaN or -inf log-probs in padding (an engine's fill value) give weight 0 there and finite metrics."""
    rollout = ROLLOUT.clone()
    rollout[1, 2] = float("nan")
    old = OLD.clone()
    old[1, 2] = -float("inf")
    for level in ("token", "sequence"):
        weights, metrics = rollout_is_weights(old, rollout, MASK, level=level, mode="truncate", clip_max=2.0)
        assert weights[1, 2] == 0.0 and torch.isfinite(weights).all()
        assert all(torch.isfinite(value) for value in metrics.values())


def test_long_reply_cannot_overflow() -> None:
    """A sequence ratio of exp(1000) is truncated in log space, not computed as inf first."""
    old, rollout, mask = torch.zeros(1, 100), torch.full((1, 100), -10.0), torch.ones(1, 100)
    weights, _ = rollout_is_weights(old, rollout, mask, level="sequence", mode="truncate", clip_max=2.0)
    torch.testing.assert_close(weights, torch.full((1, 100), 2.0))
    masked, _ = rollout_is_weights(old, rollout, mask, level="sequence", mode="mask", clip_max=2.0)
    assert (masked == 0).all()


def test_weights_carry_no_gradient() -> None:
    old = OLD.clone().requires_grad_(True)
    weights, _ = rollout_is_weights(old, ROLLOUT, MASK, level="token", mode="truncate", clip_max=2.0)
    assert not weights.requires_grad
