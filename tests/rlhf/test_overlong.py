from __future__ import annotations

import pytest
import torch
from trl.rewards import get_soft_overlong_punishment

from rlhf.overlong import soft_overlong_penalty, without_truncated


def test_soft_overlong_penalty_hand_values() -> None:
    lengths = torch.tensor([0, 12, 15, 16, 17, 18, 20, 21])
    # L_max 20, buffer 4: free up to 16 tokens, then -1/4 a token down to -1 at 20; past the limit -1
    expected = [0.0, 0.0, 0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert soft_overlong_penalty(lengths, 20, 4).tolist() == expected
    assert soft_overlong_penalty(lengths, 20, 4, penalty=0.5).tolist() == [0.5 * e for e in expected]
    assert soft_overlong_penalty(lengths, 20, 0).tolist() == [0.0] * 8  # off
    assert soft_overlong_penalty(lengths, 20, 20)[1].item() == pytest.approx(-0.6)  # all buffer: -12/20


@pytest.mark.parametrize(("max_len", "buffer"), [(20, 4), (48, 16), (7, 7), (100, 1)])
def test_soft_overlong_penalty_equals_trl(max_len: int, buffer: int) -> None:
    """TRL's reward function (DAPO eq. 13) on the same lengths, as token-id lists."""
    lengths = torch.arange(0, max_len + 3)
    trl_penalty = get_soft_overlong_punishment(max_len, buffer)([[7] * n for n in lengths.tolist()])
    torch.testing.assert_close(soft_overlong_penalty(lengths, max_len, buffer), torch.tensor(trl_penalty).float())


def test_soft_overlong_penalty_refuses_a_buffer_past_the_limit() -> None:
    with pytest.raises(ValueError, match="buffer must be in"):
        soft_overlong_penalty(torch.tensor([3]), 8, 9)


def test_without_truncated_zeroes_the_cut_off_rows_only() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    kept = without_truncated(mask, torch.tensor([False, True, False]))
    assert kept.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]] and kept.dtype == mask.dtype
    with pytest.raises(ValueError, match="truncated has shape"):
        without_truncated(mask, torch.tensor([True, False]))
