"""Per-token KL estimators (family "kl_estimator") and KL-shaped token rewards.

Legend: B = sequences (prompts x samples), T = response tokens.

The estimators approximate KL(pi || pi_ref) from tokens sampled from pi, using only the two log-probs of the sampled
token (J. Schulman, "Approximating KL Divergence", 2020, http://joschu.net/blog/kl-approx.html). With

    log_ratio = logprobs - ref_logprobs = log pi(x) - log pi_ref(x)

    k1 = log_ratio                              unbiased, high variance, can be negative
    k2 = 0.5 * log_ratio^2                      biased, low variance, >= 0
    k3 = exp(-log_ratio) - 1 + log_ratio        unbiased, low variance, >= 0   (= (r - 1) - log r, r = pi_ref/pi)

Every estimator takes logprobs (B, T) and ref_logprobs (B, T) and returns (B, T), unmasked; ``masked_kl`` runs one
with padding cleaned first, which a loss needs (masking afterwards leaves NaN gradients where k3 overflowed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlhf.registry import Registry

KLEstimatorFn = Callable[[Tensor, Tensor], Tensor]

KL_ESTIMATORS: Registry[KLEstimatorFn] = Registry("kl_estimator")
register_kl_estimator = KL_ESTIMATORS.register
get_kl_estimator = KL_ESTIMATORS.get


@register_kl_estimator("k1")
def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi(x) - log pi_ref(x). logprobs, ref_logprobs (B, T) -> (B, T). Schulman 2020."""
    return logprobs - ref_logprobs


@register_kl_estimator("k2")
def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi(x) - log pi_ref(x))^2. logprobs, ref_logprobs (B, T) -> (B, T). Schulman 2020."""
    return 0.5 * (logprobs - ref_logprobs).square()


@register_kl_estimator("k3")
def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(-log_ratio) - 1 + log_ratio, log_ratio = log pi(x) - log pi_ref(x). (B, T), (B, T) -> (B, T).

    The "low-variance KL" of Schulman 2020 (also GRPO's KL term, Shao et al. 2024, arXiv:2402.03300, eq. 4).
    """
    log_ratio = logprobs - ref_logprobs
    return torch.exp(-log_ratio) - 1.0 + log_ratio


def masked_kl(estimator: KLEstimatorFn, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """estimator(logprobs, ref_logprobs) at valid tokens, exactly 0 at padding, with finite gradients everywhere.
    (B, T), (B, T), mask (B, T) -> (B, T).

    Padding is cleaned before the estimator, not after: at a pad position the policy's log-prob of whatever token
    sits there can be below -88, where k3's exp(ref_logprobs - logprobs) is inf in fp32, and a mask applied after
    that still back-propagates 0 * inf = NaN into the whole row.
    """
    valid = mask.bool()
    return torch.where(valid, estimator(torch.where(valid, logprobs, ref_logprobs), ref_logprobs), 0.0)


def kl_shaped_token_rewards(rewards: Tensor, kl: Tensor, response_mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards for PPO with a KL penalty (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et al. 2022):

        token_rewards[b, t] = -kl_coef * kl[b, t]                      for valid t
        token_rewards[b, last_b] += rewards[b]                        last_b = the row's last valid response token
        token_rewards[b, t] = 0                                        at padding

    Naive loop the scatter below replaces:
        for b in range(B): for t in valid(b): out[b, t] = -kl_coef * kl[b, t]; out[b, max(valid(b))] += rewards[b]
    A row with no valid token gets all zeros (its reward has nowhere to go). NaN/inf in kl padding is selected away.
    rewards (B,), kl (B, T) from a registered estimator, response_mask (B, T) -> token_rewards (B, T).
    """
    B, T = response_mask.shape
    valid = response_mask.bool()
    token_rewards = torch.where(valid, -kl_coef * kl, 0.0)  # (B, T)
    positions = torch.arange(T, device=valid.device).expand(B, T)  # (B, T)
    last = torch.where(valid, positions, -1).amax(-1)  # (B,) last valid index, -1 for an empty row
    has_token = last >= 0  # (B,)
    outcome = torch.where(has_token, rewards.to(token_rewards.dtype), 0.0)  # (B,)
    return token_rewards.scatter_add(1, last.clamp_min(0).unsqueeze(-1), outcome.unsqueeze(-1))


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, samples: int) -> float:
    """The adaptive KL controller of Ziegler et al. 2019 (arXiv:1909.08593, section 2.2): after a step whose
    measured KL was ``kl``,

        e    = clip(kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * samples / horizon)

    so beta grows while the policy drifts further from the reference than ``target`` and shrinks while it stays
    closer; ``horizon`` (in samples) sets how fast. ``samples``: the sequences of the step.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * samples / horizon)
