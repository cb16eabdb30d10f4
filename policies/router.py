"""The persona router: reads the situation (pooled frozen-base states of the prompt) and weights the experts.

Trait Activation Theory says situations call up traits; the router learns that map. It sees the base model's
hidden states with every adapter off, so what it reads does not drift while the experts train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from policies.config import RouterConfig
from rlhf.router_losses import router_aux_loss


@dataclass(frozen=True)
class RouterOutput:
    weights: Tensor  # (B, E) mixture weights after temperature, top-k and renormalisation; rows sum to 1
    router_logits: Tensor  # (B, E) raw MLP outputs
    probs: Tensor  # (B, E) softmax(router_logits / temperature), before top-k
    log_probs: Tensor  # (B, E) log_softmax(router_logits / temperature): finite where probs underflow to 0
    aux_loss: Tensor  # () the configured regulariser times its coefficient


def pool_prompt(hidden: Tensor, prompt_mask: Tensor, mode: str) -> Tensor:
    """Pools hidden states (B, P, d) over the prompt tokens marked in prompt_mask (B, P) -> (B, d).

    ``mean`` averages the marked tokens; ``last`` takes the last marked token (prompts may be left-padded).
    """
    mask = prompt_mask.to(hidden.dtype)
    if (mask.sum(-1) == 0).any():
        raise ValueError("a prompt has no tokens in prompt_mask; cannot route an empty prompt")
    if mode == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    if mode == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * prompt_mask.long()).argmax(-1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"router.pooling: unknown mode {mode!r}; choose mean or last")


def top_k_renormalise(probs: Tensor, k: int | None) -> Tensor:
    """Zeroes all but the k largest probabilities of each row and rescales the row to sum to 1. (B, E)."""
    if k is None or k >= probs.shape[-1]:
        return probs
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    kept, indices = probs.topk(k, dim=-1)
    sparse = torch.zeros_like(probs).scatter(-1, indices, kept)
    return sparse / sparse.sum(-1, keepdim=True)


def replay_selection(log_probs: Tensor, used: Tensor) -> Tensor:
    """Weights over the experts a rollout used (routing replay): the router's probabilities (``log_probs`` (B, E))
    kept where ``used`` (B, E) > 0, then renormalised to sum to 1 per row: softmax of the log-probs with the unused
    experts at -inf, so that it stays finite where every used expert's probability underflows to 0 in fp32.

    The learners route each step's prompts for the rollouts, but re-route every micro-batch in the update with
    other padding and batch shapes (and in bf16 on GPUs), so two near-tied experts can come out ranked the other
    way and a sample would be scored under experts that did not generate it. Replaying the rollout's top-k keeps
    the mixture on those experts; the router still learns through the kept probabilities. When both sides pick the
    same experts this equals ``top_k_renormalise(probs, k)``."""
    return torch.softmax(log_probs.masked_fill(used <= 0, float("-inf")), dim=-1)


class PersonaRouter(nn.Module):
    """MLP from a pooled situation embedding (B, d) to expert logits (B, E), then softmax and top-k."""

    def __init__(self, hidden_size: int, num_experts: int, config: RouterConfig):
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(hidden_size)  # base hidden states have large, layer-dependent scales
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, num_experts)
        )

    def embed(self, pooled: Tensor) -> Tensor:
        """The router's own situation embedding (B, hidden): what stage 2's contrastive loss shapes."""
        return self.mlp[1](self.mlp[0](self.norm(pooled.to(self.norm.weight.dtype))))

    def forward(self, pooled: Tensor) -> RouterOutput:
        router_logits = self.mlp[2](self.embed(pooled))  # (B, E)
        log_probs = torch.log_softmax(router_logits.float() / self.config.temperature, dim=-1)
        probs = log_probs.exp()
        weights = top_k_renormalise(probs, self.config.top_k)
        aux = self.config.aux_coef * router_aux_loss(self.config.aux_loss, probs, weights)
        return RouterOutput(
            weights=weights, router_logits=router_logits, probs=probs, log_probs=log_probs, aux_loss=aux
        )
