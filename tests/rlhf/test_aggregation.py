"""Loss aggregation: hand values per mode, NaN padding, and two simulated data-parallel ranks = full batch."""

from __future__ import annotations

import pytest
import torch

from rlhf.aggregation import LOSS_AGGREGATIONS, aggregate

NAN = float("nan")
MODES = LOSS_AGGREGATIONS.names()


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor]:
    per_token_loss = torch.tensor([[1.0, 2.0, NAN], [3.0, 4.0, 5.0]])
    response_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return per_token_loss, response_mask


def test_hand_values() -> None:
    loss, mask = _hand_batch()
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(3.0)  # (1+2+3+4+5) / 5 tokens
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(2.75)  # (3/2 + 12/3) / 2
    assert aggregate(loss, mask, "seq-sum-const").item() == pytest.approx(2.5)  # 15 / (2 seqs * T = 3)
    assert aggregate(loss, mask, "seq-sum-const", max_response_len=4).item() == pytest.approx(1.875)  # 15 / (2 * 4)


def test_empty_rows_and_all_padding() -> None:
    loss = torch.tensor([[2.0, 4.0], [NAN, NAN]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(3.0)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(1.5)  # (3 + 0) / 2: empty row = 0
    for mode in MODES:
        assert aggregate(loss, torch.zeros_like(mask), mode).item() == 0.0  # no token at all: 0, not NaN


@pytest.mark.parametrize("mode", MODES)
def test_nan_padding_does_not_leak_into_gradient(mode: str) -> None:
    loss, mask = _hand_batch()
    loss.requires_grad_(True)
    aggregate(loss, mask, mode).backward()
    assert torch.isfinite(loss.grad).all() and loss.grad[0, 2] == 0


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_reproduce_full_batch(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    B, T = 5, 8
    per_token_loss = torch.randn(B, T, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([2, 3, 8, 1, 6])
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    per_token_loss[~mask.bool()] = NAN
    full = aggregate(per_token_loss, mask, mode, max_response_len=T)

    # rank 0 gets 2 rows and pads them only to its own longest (3), rank 1 gets 3 rows: uneven on purpose
    shards = [(per_token_loss[:2, :3], mask[:2, :3]), (per_token_loss[2:], mask[2:])]
    global_tokens = float(mask.sum())  # what an all-reduce of the ranks' token counts gives
    global_seqs = float(B)
    rank_losses = [
        aggregate(loss, m, mode, global_tokens=global_tokens, global_seqs=global_seqs, dp_size=2, max_response_len=T)
        for loss, m in shards
    ]
    # DDP / DeepSpeed average the ranks' gradients, i.e. optimise the mean of the rank losses
    torch.testing.assert_close((rank_losses[0] + rank_losses[1]) / 2, full)

    # without the global counts the local means do not average to the full-batch loss (why the counts exist)
    naive = [aggregate(loss, m, mode, max_response_len=T) for loss, m in shards]
    assert not torch.allclose((naive[0] + naive[1]) / 2, full)


def test_dp_size_without_global_count_raises() -> None:
    loss, mask = _hand_batch()
    with pytest.raises(ValueError, match="needs the global tokens count; pass global_tokens"):
        aggregate(loss, mask, "token-mean", dp_size=2)
    with pytest.raises(ValueError, match="pass global_seqs"):
        aggregate(loss, mask, "seq-mean-token-mean", dp_size=2, global_tokens=5.0)
    with pytest.raises(ValueError, match="unknown loss_agg 'seq-mean-token-sum'; registered: token-mean"):
        aggregate(loss, mask, "seq-mean-token-sum")
