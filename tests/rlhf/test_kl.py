"""KL estimators k1/k2/k3 and KL-shaped token rewards: hand values, exact expectations, loop reference, padding."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.kl import adaptive_kl_coef, get_kl_estimator, k1, k2, k3, kl_shaped_token_rewards, masked_kl

NAN = float("nan")


def test_estimators_hand_values() -> None:
    # pi(x) = 0.5, pi_ref(x) = 0.25: log_ratio = ln 2
    logprobs, ref_logprobs = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    ln2 = math.log(2.0)
    assert k1(logprobs, ref_logprobs).item() == pytest.approx(ln2)
    assert k2(logprobs, ref_logprobs).item() == pytest.approx(0.5 * ln2**2)
    assert k3(logprobs, ref_logprobs).item() == pytest.approx(0.5 - 1.0 + ln2)  # exp(-ln 2) - 1 + ln 2
    for name in ("k1", "k2", "k3"):
        assert get_kl_estimator(name)(logprobs, logprobs).item() == 0.0  # identical policies -> 0
    with pytest.raises(ValueError, match="unknown kl_estimator 'k4'; registered: k1, k2, k3"):
        get_kl_estimator("k4")


def test_k1_and_k3_are_unbiased_k3_nonnegative() -> None:
    # exact expectation over x ~ pi of a 5-token vocabulary: E[k1] = E[k3] = KL(pi || pi_ref) = sum pi log(pi/pi_ref)
    gen = torch.Generator().manual_seed(0)
    log_pi = torch.randn(5, generator=gen, dtype=torch.float64).log_softmax(-1)
    log_ref = torch.randn(5, generator=gen, dtype=torch.float64).log_softmax(-1)
    pi = log_pi.exp()
    kl = (pi * (log_pi - log_ref)).sum()
    torch.testing.assert_close((pi * k1(log_pi, log_ref)).sum(), kl)
    torch.testing.assert_close((pi * k3(log_pi, log_ref)).sum(), kl)
    assert (k3(log_pi, log_ref) >= 0).all() and (k2(log_pi, log_ref) >= 0).all()


def test_in_loss_gradient_of_k1_is_zero_in_expectation_unlike_k2_and_k3() -> None:
    """Why the config refuses k1 with kl.placement=loss: E_{x~pi}[grad k1(x)] = E_pi[grad log pi] = 0 exactly, while
    k2's expected gradient is grad KL(pi || ref) (checked here against autograd of the exact KL)."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    log_ref = torch.randn(5, generator=gen, dtype=torch.float64).log_softmax(-1)

    def expected_gradient(estimator) -> torch.Tensor:  # sum_x pi(x) grad estimator(x), pi(x) held fixed
        log_pi = logits.log_softmax(-1)
        (grad,) = torch.autograd.grad((log_pi.exp().detach() * estimator(log_pi, log_ref)).sum(), logits)
        return grad

    torch.testing.assert_close(expected_gradient(k1), torch.zeros(5, dtype=torch.float64))
    log_pi = logits.log_softmax(-1)
    (exact,) = torch.autograd.grad((log_pi.exp() * (log_pi - log_ref)).sum(), logits)
    torch.testing.assert_close(expected_gradient(k2), exact)
    assert expected_gradient(k3).abs().max() > 0.01


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_masked_kl_is_zero_at_padding_with_finite_gradients(name: str) -> None:
    """A pad position where the policy's log-prob is -95 (exp(95) is inf in fp32): the valid tokens' values are the
    estimator's, padding is 0, and the gradient is finite everywhere and 0 at padding. Masking the estimator's
    output afterwards instead gives NaN gradients for k3."""
    logprobs = torch.tensor([[-1.0, -0.5, -95.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -0.5, 0.0]])  # 0 at padding, as the learner's score pass leaves it
    mask = torch.tensor([[1, 1, 0]])
    estimator = get_kl_estimator(name)
    kl = masked_kl(estimator, logprobs, ref, mask)
    torch.testing.assert_close(kl[:, :2], estimator(logprobs[:, :2], ref[:, :2]))
    assert kl[0, 2].item() == 0.0
    (grad,) = torch.autograd.grad(kl.sum(), logprobs)
    assert torch.isfinite(grad).all() and grad[0, 2].item() == 0.0 and grad[0, 0].item() != 0.0
    if name == "k3":
        (unsafe,) = torch.autograd.grad(torch.where(mask.bool(), k3(logprobs, ref), 0.0).sum(), logprobs)
        assert unsafe[0, 2].isnan()


def test_shaped_rewards_hand_values() -> None:
    # kl_coef = 0.5; the sequence reward lands on each row's last valid token
    #   row 0 (2 valid): [-0.05, -0.1 + 1, 0]      row 1 (3 valid): [-0.15, -0.2, -0.25 + 2]
    #   row 2 (no valid token): zeros, reward dropped
    rewards = torch.tensor([1.0, 2.0, 3.0])
    kl = torch.tensor([[0.1, 0.2, NAN], [0.3, 0.4, 0.5], [NAN, float("inf"), NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    out = kl_shaped_token_rewards(rewards, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(out, torch.tensor([[-0.05, 0.9, 0.0], [-0.15, -0.2, 1.75], [0.0, 0.0, 0.0]]))


def shaped_loop_reference(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    out = torch.zeros_like(kl)
    for b in range(kl.shape[0]):
        valid = [t for t in range(kl.shape[1]) if mask[b, t]]
        for t in valid:
            out[b, t] = -kl_coef * kl[b, t]
        if valid:
            out[b, max(valid)] += rewards[b]
    return out


def test_shaped_rewards_match_loop_with_gaps() -> None:
    gen = torch.Generator().manual_seed(2)
    B, T = 5, 6
    kl = torch.rand(B, T, generator=gen)
    rewards = torch.randn(B, generator=gen)
    mask = torch.rand(B, T, generator=gen) > 0.4  # arbitrary gaps, incl. left padding
    mask[0] = False
    kl[~mask] = NAN
    out = kl_shaped_token_rewards(rewards, kl, mask, kl_coef=0.2)
    torch.testing.assert_close(out, shaped_loop_reference(rewards, kl, mask, 0.2))
    torch.testing.assert_close(out.sum(-1), torch.where(mask.any(-1), rewards, 0.0) - 0.2 * kl.nan_to_num().sum(-1))


@pytest.mark.parametrize(
    ("kl", "expected"),
    [
        (0.05, 0.1),  # on target: beta stays
        (0.055, 0.1 * (1 + 0.1 * 16 / 100)),  # 10% over: +0.1 * samples / horizon
        (0.5, 0.1 * (1 + 0.2 * 16 / 100)),  # far over: the error is clipped at +0.2
        (0.0, 0.1 * (1 - 0.2 * 16 / 100)),  # no KL at all: clipped at -0.2
    ],
)
def test_adaptive_kl_coef_hand_values(kl: float, expected: float) -> None:
    assert adaptive_kl_coef(0.1, kl, target=0.05, horizon=100, samples=16) == pytest.approx(expected)
