"""Masked reductions: the one place where padded tensors are summed, averaged or whitened.

Legend: B = sequences (prompts x samples), T = response tokens. Every function takes an explicit ``mask`` (no
default) that broadcasts against ``values``; a true / non-zero entry marks a valid element. Values are *selected*
with ``torch.where`` before any arithmetic, so NaN or inf sitting in padding never reaches a sum or a gradient.
Denominators (element counts) are clamped to at least 1, so an all-padding row reduces to 0 instead of NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _select(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast ``values`` and ``mask`` to one shape; return (values with invalid entries set to 0, bool mask)."""
    shape = torch.broadcast_shapes(values.shape, mask.shape)
    keep = mask.bool().expand(shape)
    return torch.where(keep, values.expand(shape), torch.zeros((), dtype=values.dtype, device=values.device)), keep


def _count(keep: Tensor, dim: int | tuple[int, ...] | None, dtype: torch.dtype) -> Tensor:
    """Number of valid entries along ``dim`` (all dims when None), clamped to >= 1."""
    counts = keep.sum() if dim is None else keep.sum(dim)
    return counts.to(dtype).clamp_min(1.0)


def masked_sum(values: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """sum_i m_i x_i over ``dim`` (all dims when None), computed as sum(where(m, x, 0)).

    values: e.g. (B, T); mask: broadcastable to values, e.g. the response_mask (B, T).
    Returns a scalar (dim=None) or the tensor reduced over ``dim``.
    """
    selected, _ = _select(values, mask)
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """sum_i m_i x_i / max(sum_i m_i, 1) over ``dim`` (all dims when None).

    values: e.g. (B, T); mask: broadcastable to values. A slice with no valid entry gives 0, never NaN.
    """
    selected, keep = _select(values, mask)
    total = selected.sum() if dim is None else selected.sum(dim)
    return total / _count(keep, dim, values.dtype)


def masked_var(
    values: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None, *, unbiased: bool = True
) -> Tensor:
    """Variance of the valid entries: sum_i m_i (x_i - mean)^2 / (n - 1) with Bessel's correction, else / n.

    n = number of valid entries; the denominator is clamped to >= 1, so a single valid entry gives 0 (not NaN).
    values: e.g. (B,) or (B, T); mask: broadcastable to values.
    """
    selected, keep = _select(values, mask)
    dims = tuple(range(selected.dim())) if dim is None else dim
    n = keep.sum(dims, keepdim=True).to(values.dtype)
    mean = selected.sum(dims, keepdim=True) / n.clamp_min(1.0)
    centred_sq = torch.where(keep, (selected - mean) ** 2, 0.0)
    denominator = (n - 1.0 if unbiased else n).clamp_min(1.0)
    var = centred_sq.sum(dims, keepdim=True) / denominator
    return var.reshape(()) if dim is None else var.squeeze(dims)


def masked_whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over all valid entries (unbiased var); padding comes back as 0.

    ``shift_mean=False`` keeps the original mean: (x - mean) / sqrt(var + eps) + mean (only the scale changes).
    values: e.g. advantages (B, T); mask: broadcastable to values, e.g. the response_mask (B, T).
    """
    selected, keep = _select(values, mask)
    mean = masked_mean(selected, keep)
    whitened = (selected - mean) * torch.rsqrt(masked_var(selected, keep) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, 0.0)
