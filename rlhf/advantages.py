"""Advantage estimators as pure tensor functions, registered by name (family "advantage").

Legend: B = sequences (prompts x samples), T = response tokens, G = samples per prompt.

One call shape for every estimator::

    advantages, returns = get_advantage(name)(AdvantageInputs(...), **options)   # (B, T), (B, T)

``AdvantageInputs`` carries every tensor an estimator may read; each estimator names the fields it needs and raises
a ValueError naming a missing one. ``options`` are the estimator's own keyword-only scalars (e.g. ``gamma``,
``lam`` for GAE; ``scale_by_std``, ``normalize`` for GRPO). Both outputs are 0 at padding. Outcome-only
estimators (GRPO) have no value baseline, so their ``returns`` are the advantages themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlhf.masked import masked_var, masked_whiten
from rlhf.registry import Registry

AdvantageFn = Callable[..., tuple[Tensor, Tensor]]

ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage")
register_advantage = ADVANTAGE_ESTIMATORS.register
get_advantage = ADVANTAGE_ESTIMATORS.get


@dataclass(frozen=True)
class AdvantageInputs:
    """The tensors advantage estimators read; an estimator uses a subset and checks it is present."""

    response_mask: Tensor  # (B, T) 1 = valid response token
    rewards: Tensor | None = None  # (B,) sequence-level reward r_i (outcome estimators: grpo)
    group_ids: Tensor | None = None  # (B,) int, same id = samples of the same prompt (grpo)
    token_rewards: Tensor | None = None  # (B, T) per-token reward r_t, e.g. KL-shaped (gae)
    values: Tensor | None = None  # (B, T) critic values V_t (gae)

    def require(self, *fields: str, estimator: str) -> tuple[Tensor, ...]:
        """The named fields, or ValueError naming the first missing one and the estimator that needs it."""
        missing = [name for name in fields if getattr(self, name) is None]
        if missing:
            raise ValueError(f"advantage {estimator!r} needs AdvantageInputs.{missing[0]} (got None)")
        return tuple(getattr(self, name) for name in fields)


def _spread_over_tokens(per_sequence: Tensor, response_mask: Tensor) -> Tensor:
    """(B,) -> (B, T): the sequence's value at every valid token, 0 at padding."""
    return torch.where(response_mask.bool(), per_sequence.unsqueeze(-1), 0.0)


@register_advantage("grpo")
def grpo(
    inputs: AdvantageInputs, *, scale_by_std: bool = True, normalize: str = "group", eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Group-relative advantage (GRPO, Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300):

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)      for i in group g (same group_ids), broadcast over tokens.

    std is the unbiased (Bessel, n - 1) std, as in TRL; a group of one sample has std 0 and A = 0.
    Options:
      scale_by_std=False: A_i = r_i - mean_g(r), no division (Dr.GRPO, Liu et al. 2025, arXiv:2503.20783).
      normalize="group":  divide by the std of the sample's own group (above).
      normalize="batch":  divide by the std of all B centred rewards (r_i - mean_g(r)) instead of the group std
                          (group mean, batch std; REINFORCE++-baseline style, Hu et al. 2025, arXiv:2501.03262).
                          Note TRL's scale_rewards="batch" uses the std of the raw rewards r, not the centred ones.
    Groups may be non-contiguous and of any size (G samples per prompt in practice).
    Reads: rewards (B,), group_ids (B,) int, response_mask (B, T).
    Returns (advantages (B, T), returns (B, T)), both equal and 0 at padding.
    """
    rewards, group_ids, response_mask = inputs.require("rewards", "group_ids", "response_mask", estimator="grpo")
    if normalize not in ("group", "batch"):
        raise ValueError(f"grpo: normalize must be 'group' or 'batch', got {normalize!r}")
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    _, group = torch.unique(group_ids, return_inverse=True)  # (B,) dense group index in [0, K)
    num_groups = int(group.max()) + 1 if group.numel() else 0
    counts = torch.bincount(group, minlength=num_groups).to(rewards.dtype)  # (K,) samples per group
    group_sum = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add(0, group, rewards)
    centred = rewards - (group_sum / counts)[group]  # (B,) r_i - mean_g(r)
    if scale_by_std:
        if normalize == "group":
            sq = torch.zeros_like(group_sum).index_add(0, group, centred**2)  # (K,) sum of squared deviations
            std = (sq / (counts - 1.0).clamp_min(1.0)).sqrt()[group]  # (B,) unbiased group std
        else:
            std = masked_var(centred, torch.ones_like(centred, dtype=torch.bool)).sqrt()  # scalar batch std
        centred = centred / (std + eps)
    advantages = _spread_over_tokens(centred, response_mask)
    return advantages, advantages


@register_advantage("rloo")
def rloo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE Leave-One-Out (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et
    al. 2024, arXiv:2402.14740): each sample's baseline is the mean reward of the other samples of its prompt,

        A_i = r_i - (sum_{j in g, j != i} r_j) / (n_g - 1)      = n_g / (n_g - 1) * (r_i - mean_g(r))

    an unbiased baseline (it does not depend on sample i), with no std scaling. A group of one sample has no other
    to compare with: A = 0. Broadcast over the reply's tokens, as GRPO's.
    Reads: rewards (B,), group_ids (B,) int, response_mask (B, T).
    Returns (advantages (B, T), returns (B, T)), both equal and 0 at padding.
    """
    rewards, group_ids, response_mask = inputs.require("rewards", "group_ids", "response_mask", estimator="rloo")
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    _, group = torch.unique(group_ids, return_inverse=True)  # (B,) dense group index
    counts = torch.bincount(group).to(rewards.dtype)  # (K,)
    group_sum = torch.zeros_like(counts).index_add(0, group, rewards)  # (K,)
    others = (counts - 1.0)[group]  # (B,)
    baseline = (group_sum[group] - rewards) / others.clamp_min(1.0)  # (B,) mean of the other samples
    advantages = _spread_over_tokens(torch.where(others > 0, rewards - baseline, 0.0), response_mask)
    return advantages, advantages


@register_advantage("reinforce++")
def reinforce_plus_plus(inputs: AdvantageInputs, *, gamma: float = 1.0) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu et al. 2025, arXiv:2501.03262): the discounted reward-to-go of per-token rewards (the
    sequence reward at the last token, -beta * KL_t at every token when the KL is in the reward), whitened over all
    valid tokens of the batch instead of a critic or group baseline,

        R_t = sum_{s >= t} gamma^(s - t) * r_s          (over the row's valid tokens)
        A_t = (R_t - mean_batch(R)) / sqrt(var_batch(R) + 1e-8)      (masked_whiten, unbiased var)

    Returns are R_t (what a critic would regress on). The batch statistics span every prompt, so no group of
    samples is needed. (REINFORCE++-baseline, the group-mean variant, is ``grpo`` with normalize="batch".)
    Reads: token_rewards (B, T), response_mask (B, T).
    Returns (advantages (B, T), returns (B, T)), 0 at padding.
    """
    token_rewards, response_mask = inputs.require("token_rewards", "response_mask", estimator="reinforce++")
    valid = response_mask.bool()
    token_rewards = torch.where(valid, token_rewards, 0.0).to(torch.float32)  # (B, T)
    returns = torch.zeros_like(token_rewards)
    running = token_rewards.new_zeros(token_rewards.shape[0])  # (B,) reward-to-go after t
    for t in reversed(range(token_rewards.shape[1])):
        # padding carries the running sum unchanged and is zeroed below; a masked span keeps the next valid R
        running = torch.where(valid[:, t], token_rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    returns = torch.where(valid, returns, 0.0)
    return masked_whiten(returns, response_mask), returns


@register_advantage("gae")
def gae(inputs: AdvantageInputs, *, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE",
    arXiv:1506.02438), over the valid response tokens of each row:

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}   (computed as A_t = delta_t + gamma * lam * A_{t+1})
        R_t     = A_t + V_t                                    (the critic's regression target, "returns")

    V_{t+1} past the last valid token counts as 0 (the episode ends there). Masked positions are not time steps:
    padding is skipped, and so is a masked span inside a row (e.g. tool output), so t+1 is the next *valid* token.
    Padding may hold NaN/inf; it is selected away first.
    Reads: token_rewards (B, T), values (B, T), response_mask (B, T).
    Returns (advantages (B, T), returns (B, T)), 0 at padding. No gradient flows (values are detached).
    """
    token_rewards, values, response_mask = inputs.require("token_rewards", "values", "response_mask", estimator="gae")
    B, T = response_mask.shape
    valid = response_mask.bool()
    token_rewards = torch.where(valid, token_rewards, 0.0).detach()  # (B, T)
    values = torch.where(valid, values, 0.0).detach()  # (B, T)
    advantages = torch.zeros_like(values)  # (B, T)
    next_value = values.new_zeros(B)  # (B,) V of the next valid token, 0 past the end
    next_advantage = values.new_zeros(B)  # (B,) A of the next valid token
    for t in reversed(range(T)):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage  # (B,)
        is_step = valid[:, t]  # (B,) masked positions leave the carried state untouched
        advantages[:, t] = torch.where(is_step, advantage, 0.0)
        next_advantage = torch.where(is_step, advantage, next_advantage)
        next_value = torch.where(is_step, values[:, t], next_value)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns
