"""Reduce a per-token loss (B, T) to the scalar that is backpropagated: one function, named modes ("loss_agg").

Legend: B = sequences (prompts x samples) on this rank, T = response tokens.

Modes (L = per_token_loss, m = response_mask):

    token-mean            sum_{b,t} m L / N_tok              every valid token weighs the same (DAPO, TRL "bnpo")
    seq-mean-token-mean   sum_b [sum_t m L / max(sum_t m, 1)] / N_seq
                                                             every sequence weighs the same (GRPO, TRL "grpo")
    seq-sum-const         sum_{b,t} m L / (N_seq * max_response_len)
                                                             constant normalizer, no length bias (Dr.GRPO)

Sharding. DDP / DeepSpeed *average* the gradients of the dp_size ranks. If rank k returns
loss_k = S_k * dp_size / N_global (S_k = its numerator, N_global = the count over all ranks), then
mean_k loss_k = sum_k S_k / N_global = the full-batch loss, however the batch is split and however the rows are
padded. So pass ``global_tokens`` (token-mean) or ``global_seqs`` (the two seq modes), summed over the ranks of this
optimizer step's micro-batch, and ``dp_size``. Without them the local count is used, which is only correct for
dp_size=1 (asking for dp_size > 1 without the global count raises). With gradient accumulation, also sum the
counts over the accumulated micro-batches and multiply the loss by their number, by the same argument.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlhf.masked import masked_mean, masked_sum
from rlhf.registry import Registry

LossAggFn = Callable[..., Tensor]

LOSS_AGGREGATIONS: Registry[LossAggFn] = Registry("loss_agg")
register_loss_agg = LOSS_AGGREGATIONS.register
get_loss_agg = LOSS_AGGREGATIONS.get


def _divide(total: Tensor, local_count: Tensor | float, global_count: float | None, dp_size: int, what: str) -> Tensor:
    """total / count: the local count (clamped >= 1), or global_count / dp_size when the global count is given."""
    if global_count is None:
        if dp_size != 1:
            raise ValueError(f"aggregate: dp_size={dp_size} needs the global {what} count; pass global_{what}")
        return total / torch.as_tensor(local_count, dtype=total.dtype).clamp_min(1.0)
    return total * dp_size / max(float(global_count), 1.0)


@register_loss_agg("token-mean")
def token_mean(
    per_token_loss: Tensor,
    response_mask: Tensor,
    *,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    dp_size: int = 1,
    max_response_len: int | None = None,
) -> Tensor:
    """sum_{b,t} m L / N_tok (N_tok = global_tokens / dp_size if given, else this rank's valid tokens).

    per_token_loss, response_mask (B, T) -> scalar. DAPO (Yu et al. 2025, arXiv:2503.14476, eq. 8).
    """
    return _divide(masked_sum(per_token_loss, response_mask), response_mask.sum(), global_tokens, dp_size, "tokens")


@register_loss_agg("seq-mean-token-mean")
def seq_mean_token_mean(
    per_token_loss: Tensor,
    response_mask: Tensor,
    *,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    dp_size: int = 1,
    max_response_len: int | None = None,
) -> Tensor:
    """sum_b mean_t(m L)_b / N_seq (N_seq = global_seqs / dp_size if given, else B; empty rows count, as 0).

    per_token_loss, response_mask (B, T) -> scalar. GRPO (Shao et al. 2024, arXiv:2402.03300, eq. 3).
    """
    per_seq = masked_mean(per_token_loss, response_mask, dim=-1)  # (B,)
    return _divide(per_seq.sum(), per_seq.shape[0], global_seqs, dp_size, "seqs")


@register_loss_agg("seq-sum-const")
def seq_sum_const(
    per_token_loss: Tensor,
    response_mask: Tensor,
    *,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    dp_size: int = 1,
    max_response_len: int | None = None,
) -> Tensor:
    """sum_{b,t} m L / (N_seq * max_response_len) (N_seq as in seq-mean-token-mean).

    Pass the configured generation limit as ``max_response_len``: the default, this tensor's T, changes with
    padding and between ranks. per_token_loss, response_mask (B, T) -> scalar.
    Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783, sec. 3.2).
    """
    B, T = per_token_loss.shape
    length = T if max_response_len is None else max_response_len
    total = masked_sum(per_token_loss, response_mask) / length
    return _divide(total, B, global_seqs, dp_size, "seqs")


def aggregate(
    per_token_loss: Tensor,
    response_mask: Tensor,
    mode: str,
    *,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    dp_size: int = 1,
    max_response_len: int | None = None,
) -> Tensor:
    """The registered mode ``mode`` (see the module docstring) applied to per_token_loss (B, T), response_mask (B, T).

    Returns a scalar. global_tokens / global_seqs: valid tokens / sequences summed over all dp_size ranks; with them,
    averaging the ranks' results reproduces the full-batch loss. Unknown ``mode`` -> ValueError listing the modes.
    """
    return get_loss_agg(mode)(
        per_token_loss,
        response_mask,
        global_tokens=global_tokens,
        global_seqs=global_seqs,
        dp_size=dp_size,
        max_response_len=max_response_len,
    )
