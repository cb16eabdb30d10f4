"""Router regularisers as pure functions of routing probabilities (B, E); B = sequences, E = experts."""

from __future__ import annotations

from torch import Tensor


def routing_entropy(probs: Tensor) -> Tensor:
    """Mean per-sequence entropy H = -sum_e p_e log p_e. probs (B, E) -> scalar."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()


def load_balance_loss(probs: Tensor, weights: Tensor) -> Tensor:
    """Switch-Transformer balance loss L = E * sum_e f_e * P_e (Fedus et al. 2021, eq. 4).

    f_e = share of the batch's expert slots given to e (from the non-zero routing ``weights``, not
    differentiable), P_e = mean routing probability of e (differentiable). L = 1 when usage is uniform and
    grows towards E as routing collapses onto one expert. probs, weights (B, E) -> scalar.
    """
    num_experts = probs.shape[-1]
    selected = (weights > 0).to(probs.dtype)  # (B, E)
    share = selected.sum(0) / selected.sum().clamp_min(1.0)  # (E,)
    return num_experts * (share * probs.mean(0)).sum()


def router_anchor_kl(probs: Tensor, ref_probs: Tensor) -> Tensor:
    """KL(ref || p) = mean_b sum_e ref_be (log ref_be - log p_be): how far the router moved from a reference router
    (the one the run started from) on the same prompts. probs, ref_probs (B, E) -> scalar, differentiable in probs.

    RL rewards whichever experts wrote the best replies, and without an anchor the router can drift to one expert
    for every situation; this term keeps the situation -> trait map that stage 2 learned while RL adjusts it."""
    ref = ref_probs.detach()
    return (ref * (ref.clamp_min(1e-12).log() - probs.clamp_min(1e-12).log())).sum(-1).mean()


def router_aux_loss(kind: str, probs: Tensor, weights: Tensor) -> Tensor:
    """The configured regulariser: ``none`` -> 0, ``load_balance``, or ``entropy`` (= -H, so it favours spread)."""
    if kind == "none":
        return probs.new_zeros(())
    if kind == "load_balance":
        return load_balance_loss(probs, weights)
    if kind == "entropy":
        return -routing_entropy(probs)
    raise ValueError(f"router.aux_loss: unknown kind {kind!r}; choose none, load_balance or entropy")
