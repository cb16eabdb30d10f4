"""Replies that run into rollout.max_new_tokens, as pure tensor functions: DAPO's soft overlong punishment and the
mask that leaves cut-off replies out of the loss (DAPO's overlong filtering).

A reply cut off at the token limit is judged by the rewards on text that stops mid-sentence, and its last tokens
are credited with an ending they never reached. Yu et al. 2025 ("DAPO", arXiv:2503.14476, section 3.4) either
punish length smoothly as it nears the limit, or drop truncated replies from the loss.

Legend: B = sequences, T = response tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_overlong_penalty(lengths: Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (eq. 13), scaled by ``penalty``; L = reply length in tokens (EOS included),
    L_max = ``max_len``, L_buf = ``buffer``:

        R_len(L) = 0                                           L <= L_max - L_buf
                 = penalty * ((L_max - L_buf) - L) / L_buf     L_max - L_buf < L <= L_max
                 = -penalty                                    L > L_max

    added to the sequence reward: it only takes away, and only from replies that come within ``buffer`` tokens of
    the limit, reaching -penalty there. ``buffer`` = 0 turns it off (all zeros).
    Reads lengths (B,) int or float; returns (B,) float32, <= 0.
    """
    if buffer < 0 or buffer > max_len:
        raise ValueError(f"soft_overlong_penalty: buffer must be in [0, max_len={max_len}], got {buffer}")
    lengths = lengths.to(torch.float32)
    if buffer == 0:
        return torch.zeros_like(lengths)
    start = max_len - buffer  # the last length without a penalty
    ramp = (start - lengths) / buffer  # 0 at start, -1 at max_len
    return penalty * torch.where(lengths <= start, 0.0, torch.where(lengths <= max_len, ramp, -1.0))


def without_truncated(response_mask: Tensor, truncated: Tensor) -> Tensor:
    """The tokens a loss trains on when truncated replies are left out (DAPO's overlong filtering; TRL's
    ``mask_truncated_completions``): ``response_mask`` (B, T) with the rows where ``truncated`` (B,) is set zeroed.
    Those replies still count in their group's reward baseline; only their own loss terms go."""
    if truncated.shape != response_mask.shape[:1]:
        raise ValueError(f"truncated has shape {tuple(truncated.shape)}, expected ({response_mask.shape[0]},)")
    return response_mask * (~truncated.bool()).to(response_mask.dtype)[:, None]
