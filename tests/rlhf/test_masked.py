"""Masked reductions: hand-computed values, empty slices, and NaN/inf in padding never leaking (value or gradient)."""

from __future__ import annotations

import pytest
import torch

from rlhf.masked import masked_mean, masked_sum, masked_var, masked_whiten

NAN, INF = float("nan"), float("inf")


def _padded() -> tuple[torch.Tensor, torch.Tensor]:
    # row 0: valid [1, 2], padding holds NaN; row 1: valid [3, 4, 5]; row 2: all padding (inf)
    values = torch.tensor([[1.0, 2.0, NAN], [3.0, 4.0, 5.0], [INF, -INF, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    return values, mask


def test_sum_and_mean_hand_values() -> None:
    values, mask = _padded()
    assert masked_sum(values, mask).item() == 15.0  # 1 + 2 + 3 + 4 + 5
    assert masked_mean(values, mask).item() == 3.0  # 15 / 5
    # per row: [3, 12, 0] and means [3/2, 12/3, 0/max(0, 1)]
    assert masked_sum(values, mask, dim=-1).tolist() == [3.0, 12.0, 0.0]
    assert masked_mean(values, mask, dim=-1).tolist() == [1.5, 4.0, 0.0]
    # per column: col 0 = 1 + 3 = 4 over 2, col 2 = 5 over 1
    assert masked_mean(values, mask, dim=0).tolist() == [2.0, 3.0, 5.0]


def test_all_padding_gives_zero_not_nan() -> None:
    values = torch.full((2, 3), NAN)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert masked_mean(values, mask).item() == 0.0
    assert masked_var(values, mask).item() == 0.0
    assert torch.equal(masked_whiten(values, mask), torch.zeros(2, 3))


def test_var_hand_values() -> None:
    values, mask = _padded()
    # all valid [1..5]: mean 3, squared deviations 4+1+0+1+4 = 10, unbiased 10/4, biased 10/5
    assert masked_var(values, mask).item() == pytest.approx(2.5)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2.0)
    # rows: [1, 2] -> 0.5/1; [3, 4, 5] -> 2/2; empty -> 0
    assert masked_var(values, mask, dim=-1).tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert masked_var(torch.tensor([7.0]), torch.tensor([True])).item() == 0.0  # one entry: 0/max(0, 1)


def test_var_matches_torch_on_valid_entries() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(4, 6, generator=gen)
    mask = torch.rand(4, 6, generator=gen) > 0.3
    assert masked_var(values, mask).item() == pytest.approx(values[mask].var().item(), rel=1e-5)


def test_whiten_hand_values() -> None:
    values, mask = _padded()
    out = masked_whiten(values, mask, eps=0.0)
    # (x - 3) / sqrt(2.5) at valid entries, 0 at padding
    expected = torch.tensor([[-2.0, -1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]) / 2.5**0.5
    torch.testing.assert_close(out, expected)
    kept_mean = masked_whiten(values, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(kept_mean, torch.where(mask.bool(), expected + 3.0, 0.0))


def test_broadcast_mask_counts_broadcast_entries() -> None:
    per_seq = torch.tensor([[2.0], [4.0]])  # (B, 1) broadcast over T
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # (B, T): 2 + 1 valid tokens
    assert masked_mean(per_seq, mask).item() == pytest.approx((2 * 2 + 4) / 3)


def test_nan_in_padding_does_not_leak_into_gradient() -> None:
    values, mask = _padded()
    values.requires_grad_(True)
    (masked_mean(values, mask) + masked_var(values, mask) + masked_whiten(values, mask).sum()).backward()
    assert torch.isfinite(values.grad).all()
    assert (values.grad[~mask.bool()] == 0).all()


def test_mask_is_required() -> None:
    with pytest.raises(TypeError):
        masked_mean(torch.ones(2))  # type: ignore[call-arg]
