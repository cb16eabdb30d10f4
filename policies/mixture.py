"""The fused persona mixture: E LoRA experts on one frozen nn.Linear, mixed by routing weights.

    y = base(x) + s * sum_e w_e * B_e A_e x,    s = alpha / r

The experts are stored stacked (A: E x r x d_in, B: E x d_out x r) so the whole mixture costs two matmuls, the
same as one LoRA of rank E*r: ``h = x A_stack^T`` (all experts at once), gate h by the weights, ``y_delta = h
B_stack^T``. When per-sequence weights are sparse (top-k routing) only the k chosen experts are gathered, so the
cost is that of a rank k*r LoRA (for sequences; single-token decode steps use the dense form, see below).
``naive_mixture_delta`` is the plain per-expert loop the fused paths must equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Routing:
    """Routing weights as the mixture layers consume them; build with ``make_routing``."""

    weights: Tensor  # (B, E) per sequence or (B, T, E) per token
    indices: Tensor | None  # (B, k) experts with non-zero weight, per-sequence sparse routing only
    topk_weights: Tensor | None  # (B, k) their weights

    def rows(self, index: Tensor) -> Routing:
        """The routing of batch rows ``index`` (per-sequence weights)."""
        pick = None if self.indices is None else (self.indices[index], self.topk_weights[index])
        return Routing(self.weights[index], *(pick or (None, None)))


def make_routing(weights: Tensor, num_experts: int) -> Routing:
    """Validates weights (B, E) or (B, T, E) and precomputes the sparse gather when few experts are active."""
    if not isinstance(weights, Tensor):
        raise ValueError(f"routing weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dim() not in (2, 3) or weights.shape[-1] != num_experts:
        raise ValueError(
            f"routing weights must have shape (batch, {num_experts}) or (batch, seq, {num_experts}), "
            f"got {tuple(weights.shape)}"
        )
    if not torch.isfinite(weights).all():
        raise ValueError("routing weights contain NaN or inf")
    if (weights < 0).any():
        raise ValueError("routing weights must be >= 0")
    if weights.dim() == 3:
        return Routing(weights, None, None)
    active = int((weights != 0).sum(-1).max())
    if active >= num_experts:
        return Routing(weights, None, None)
    # Rows with fewer active experts pick up zero-weight ones, which contribute exactly nothing.
    topk_weights, indices = weights.topk(max(active, 1), dim=-1)
    return Routing(weights, indices, topk_weights)


def stacked_b(lora_B: Tensor) -> Tensor:
    """The experts' B matrices side by side, (E, d_out, r) -> (d_out, E*r): the dense form's second matmul."""
    num_experts, d_out, rank = lora_B.shape
    return lora_B.permute(1, 0, 2).reshape(d_out, num_experts * rank)


def fused_mixture_delta(
    x: Tensor, lora_A: Tensor, lora_B: Tensor, routing: Routing, scaling: float, b_stacked: Tensor | None = None
) -> Tensor:
    """s * sum_e w_e B_e A_e x with two (batched) matmuls. x (B, T, d_in) -> (B, T, d_out).
    ``b_stacked`` = ``stacked_b(lora_B)`` when the caller has it cached (decoding: one copy per generate, not per
    token)."""
    batch, seq, d_in = x.shape
    num_experts, rank, _ = lora_A.shape
    d_out = lora_B.shape[1]
    # Sparse per-sequence: gather the k chosen experts of each row. Not for one-token decode steps, where copying
    # the gathered weights every step costs more than the dense rank E*r matmuls (measured: decode ~30% faster).
    # index_select, not lora_A[indices]: its backward is an index_add, where advanced indexing's is an accumulating
    # index_put (measured on CPU: the update ~9% faster).
    if routing.indices is not None and seq > 1:
        k = routing.indices.shape[1]
        chosen = routing.indices.reshape(batch * k)
        a = lora_A.index_select(0, chosen).view(batch, k * rank, d_in)  # (B, k*r, d_in)
        h = torch.bmm(x, a.transpose(1, 2)).view(batch, seq, k, rank)  # (B, T, k, r)
        h = h * (scaling * routing.topk_weights).to(h.dtype)[:, None, :, None]
        b = lora_B.index_select(0, chosen).view(batch, k, d_out, rank)
        b = b.permute(0, 2, 1, 3).reshape(batch, d_out, k * rank)  # (B, d_out, k*r)
        return torch.bmm(h.reshape(batch, seq, k * rank), b.transpose(1, 2))
    weights = routing.weights.to(x.dtype)
    gate = weights[:, None, :, None] if weights.dim() == 2 else weights[..., None]  # (B, 1|T, E, 1)
    h = F.linear(x, lora_A.reshape(num_experts * rank, d_in)).view(batch, seq, num_experts, rank)
    h = (h * (scaling * gate)).reshape(batch, seq, num_experts * rank)  # (B, T, E*r)
    return F.linear(h, stacked_b(lora_B) if b_stacked is None else b_stacked)


def naive_mixture_delta(
    x: Tensor, lora_A: Tensor, lora_B: Tensor, routing: Routing, scaling: float, b_stacked: Tensor | None = None
) -> Tensor:
    """The reference: one LoRA pass per expert, summed. Same signature and result as the fused version."""
    weights = routing.weights.to(x.dtype)
    out = torch.zeros(*x.shape[:-1], lora_B.shape[1], dtype=x.dtype, device=x.device)
    for e in range(lora_A.shape[0]):
        w = weights[:, e, None, None] if weights.dim() == 2 else weights[..., e, None]  # (B, 1|T, 1)
        out = out + scaling * w * F.linear(F.linear(x, lora_A[e]), lora_B[e])
    return out


class RoutingSlot:
    """Shared by all mixture layers of a policy: the routing they apply now (None = adapters off)."""

    def __init__(self) -> None:
        self.routing: Routing | None = None


class LoRAMixtureLinear(nn.Module):
    """Wraps a frozen nn.Linear with E stacked LoRA experts; B starts at zero so a fresh mixture is the base."""

    delta_fn: Callable[..., Tensor] = staticmethod(fused_mixture_delta)

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, scaling: float, slot: RoutingSlot):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = scaling
        self.slot = slot
        dtype, device = base.weight.dtype, base.weight.device
        init = torch.empty(num_experts, rank, base.in_features, device=device)  # fp32: the same draws in any dtype
        for a in init:  # the same init as nn.Linear and PEFT's LoRA A
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = nn.Parameter(init.to(dtype))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, base.out_features, rank, dtype=dtype, device=device))
        self._b_cache: tuple[tuple[int, int], Tensor] | None = None

    def _b_stacked_for_inference(self) -> Tensor | None:
        """``stacked_b(lora_B)`` computed once per weight version when sampling (eval mode, no gradient); the key
        is B's in-place version counter and storage, so a weight load (``copy_``) refreshes it. Never in train
        mode: optimizers such as DeepSpeed's write parameters through ``.data``, which bumps no version counter."""
        if torch.is_grad_enabled() or self.training:
            return None
        key = (self.lora_B._version, self.lora_B.data_ptr())
        if self._b_cache is None or self._b_cache[0] != key:
            self._b_cache = (key, stacked_b(self.lora_B.detach()))
        return self._b_cache[1]

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        routing = self.slot.routing
        if routing is None:
            return out
        if x.dim() != 3 or routing.weights.shape[0] != x.shape[0]:
            raise ValueError(
                f"routing weights are for batch {routing.weights.shape[0]} but the layer input has shape "
                f"{tuple(x.shape)}; route the same batch you run"
            )
        if routing.weights.dim() == 3 and routing.weights.shape[1] != x.shape[1]:
            raise ValueError(
                f"per-token routing weights cover {routing.weights.shape[1]} tokens, the input has {x.shape[1]}"
            )
        b_stacked = self._b_stacked_for_inference() if x.shape[1] == 1 else None  # decode steps only
        delta = self.delta_fn(x.to(self.lora_A.dtype), self.lora_A, self.lora_B, routing, self.scaling, b_stacked)
        return out + delta.to(out.dtype)

    def extra_repr(self) -> str:
        experts, rank, _ = self.lora_A.shape
        return f"experts={experts}, rank={rank}, scaling={self.scaling}"
