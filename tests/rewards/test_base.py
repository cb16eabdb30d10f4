"""Reward interface: score checking (every bad output is a RewardError naming the component), registry lookups."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import rewards.base
import rewards.rules  # registers the rule components
from rewards.base import REWARDS, RewardError, check_reward_options, check_scores, get_reward, register_reward


def test_check_scores_accepts_numbers_and_tensors() -> None:
    out = check_scores("demo", [1, 0.5, np.float32(-2.0), torch.tensor(3.0)], batch_size=4)
    assert out.dtype == torch.float32 and out.shape == (4,)
    assert out.tolist() == [1.0, 0.5, -2.0, 3.0]
    assert check_scores("demo", torch.tensor([0.25, 0.75], dtype=torch.float64), 2).tolist() == [0.25, 0.75]
    assert check_scores("demo", np.array([1.0, 2.0]), 2).tolist() == [1.0, 2.0]
    assert check_scores("demo", [], 0).shape == (0,)


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([1.0, float("nan"), 0.0], r"'demo': score at index 1 is nan"),
        ([1.0, 0.0, float("-inf")], r"'demo': score at index 2 is -inf"),
        ([1.0, 1e300, 0.0], r"'demo': score at index 1 is 1e\+300 \(must be finite in float32\)"),
        ([1.0, None, 0.0], r"'demo': score at index 1 is None \(NoneType\), not a number"),
        (["1.0", 0.0, 0.0], r"'demo': score at index 0 is '1.0' \(str\), not a number"),
        ([1.0, 0.0, True], r"'demo': score at index 2 is True \(bool\), not a number"),
        ([1.0, 0.0], r"'demo' returned 2 scores for a batch of 3"),
        ([1.0] * 4, r"'demo' returned 4 scores for a batch of 3"),
        (0.5, r"'demo' returned float, expected a list of 3 numbers"),
        ("abc", r"'demo' returned str, expected a list of 3 numbers"),
        (None, r"'demo' returned NoneType"),
        (torch.zeros(3, 1), r"'demo' returned a tensor of shape \(3, 1\), expected \(3,\)"),
    ],
)
def test_check_scores_rejects_bad_output(scores: object, message: str) -> None:
    with pytest.raises(RewardError, match=message):
        check_scores("demo", scores, batch_size=3)


def test_check_scores_counts_further_bad_values() -> None:
    with pytest.raises(RewardError, match=r"index 0 is nan .*\(2 more\)"):
        check_scores("demo", [float("nan"), float("inf"), float("nan")], 3)


def test_unknown_reward_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"unknown reward 'validaton'; did you mean 'validation'\? registered: "):
        get_reward("validaton")
    with pytest.raises(ValueError, match=r"unknown reward 'zzz'; registered: .*validation, dismissiveness"):
        get_reward("zzz")
    assert get_reward("length") is rewards.rules.Length


def test_reward_options_checked_by_name() -> None:
    check_reward_options("length", {"min_words": 3, "max_words": 9})
    suggestion = r"no option 'min_word'; did you mean 'min_words'.*options are: min_words, max_words"
    with pytest.raises(ValueError, match=suggestion):
        check_reward_options("length", {"min_word": 3})
    with pytest.raises(ValueError, match=r"reward 'validation' has no option 'n'"):
        check_reward_options("validation", {"n": 3})


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="reward 'validation' is already registered"):
        register_reward("validation")(rewards.rules.Length)
    assert set(REWARDS.names()) >= {"validation", "dismissiveness", "engagement", "repetition", "length"}


def test_doctests() -> None:
    result = doctest.testmod(rewards.base)
    assert result.attempted > 0 and result.failed == 0
