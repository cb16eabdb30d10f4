"""Importance weights for the gap between the rollout engine's policy and the learner's (rollout correction).

The rollouts sample with pi_rollout: vLLM's kernels in bf16 on a bf16 copy of the adapters, or weights a version
behind. The PPO ratio pi / pi_old is taken against the learner's pi_old, so the samples come from a slightly
different policy than the loss assumes; left alone, that gap biases the gradient (Yao et al. 2025, "Your
Efficient RL Framework Secretly Brings You Off-Policy RL Training"). Each token's policy loss is weighted by

    rho_t = pi_old(y_t) / pi_rollout(y_t) = exp(old_logprobs_t - rollout_logprobs_t)              (level "token")
    rho   = exp(sum_t (old_logprobs_t - rollout_logprobs_t)), the same for every token of a reply  (level "sequence")

bounded so that a rare token the engine under-rated cannot dominate a step:

    truncate (TIS):   w = clamp(rho, C_min, C_max)                                (C_min = 0 when unset)
    mask (MIS):       w = rho if C_min <= rho <= C_max else 0                     (C_min = 0 when unset)

The weight is a constant (no gradient) multiplying the per-token policy loss, as TRL's
``vllm_importance_sampling_correction`` and verl's rollout importance sampling do; the KL, entropy and value terms
are not weighted. Legend: B = sequences, T = response tokens.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from rlhf.kl import k3
from rlhf.masked import masked_mean

Level = Literal["token", "sequence"]
Mode = Literal["truncate", "mask"]


@torch.no_grad()
def mismatch_kl(old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """Mean over valid tokens of k3 = rho - 1 - log rho, rho = pi_old / pi_rollout: an estimate of
    KL(pi_rollout || pi_old) from the rollout's own samples, 0 when the engine and the learner agree. (B, T) -> ()."""
    dtype = torch.promote_types(old_logprobs.dtype, torch.float32)
    return masked_mean(k3(rollout_logprobs.to(dtype), old_logprobs.to(dtype)), response_mask.bool())


@torch.no_grad()
def rollout_is_weights(
    old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    response_mask: Tensor,
    *,
    level: Level,
    mode: Mode,
    clip_max: float,
    clip_min: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The module docstring's w: (B, T) weights, 0 at padding, and metrics (detached 0-dim tensors):

      rollout_is/weight_mean    mean w over valid tokens
      rollout_is/bounded_frac   share of valid tokens (level token) or of replies (level sequence) whose rho was
                                truncated or masked
      rollout_is/mismatch_kl    k3 estimate of KL(pi_rollout || pi_old) per token (the samples come from
                                pi_rollout): 0 when the engine and the learner agree

    old_logprobs, rollout_logprobs, response_mask (B, T). rho is computed in log space, so a sequence's sum of
    log-ratios cannot overflow exp.
    """
    valid = response_mask.bool()
    dtype = torch.promote_types(old_logprobs.dtype, torch.float32)  # bf16 log-probs are ratioed in fp32
    log_rho = torch.where(valid, old_logprobs.to(dtype) - rollout_logprobs.to(dtype), 0.0)  # (B, T)
    if level == "sequence":
        log_rho = log_rho.sum(-1, keepdim=True).expand_as(log_rho)  # (B, T): each reply's one ratio on its tokens
    log_max = math.log(clip_max)
    log_min = math.log(clip_min) if clip_min else -math.inf
    bounded = (log_rho > log_max) | (log_rho < log_min)  # (B, T)
    if mode == "truncate":
        weights = log_rho.clamp(log_min, log_max).exp()
    else:
        weights = torch.where(bounded, 0.0, log_rho.clamp(max=log_max).exp())
    weights = torch.where(valid, weights, 0.0)
    if level == "sequence":  # a reply's tokens share one rho: count replies
        bounded_frac = masked_mean((bounded & valid).any(-1).float(), valid.any(-1))
    else:
        bounded_frac = masked_mean(bounded.float(), valid)
    metrics = {
        "rollout_is/weight_mean": masked_mean(weights, valid),
        "rollout_is/bounded_frac": bounded_frac,
        "rollout_is/mismatch_kl": mismatch_kl(old_logprobs, rollout_logprobs, response_mask),
    }
    return weights, metrics
