from __future__ import annotations

import pytest
import torch

from policies.traits import DEFAULT_EXPERTS, parse_profile, validate_expert_names


def test_ten_default_experts() -> None:
    assert len(DEFAULT_EXPERTS) == 10
    assert DEFAULT_EXPERTS[:2] == ("openness_high", "openness_low")


def test_profile_maps_signs_to_poles() -> None:
    w = parse_profile("agreeableness=+1, neuroticism=-1", DEFAULT_EXPERTS)
    assert w[DEFAULT_EXPERTS.index("agreeableness_high")] == 0.5
    assert w[DEFAULT_EXPERTS.index("neuroticism_low")] == 0.5
    assert w.sum() == pytest.approx(1.0)


def test_profile_with_named_poles_is_normalised() -> None:
    w = parse_profile("openness_high=3,extraversion_low=1", DEFAULT_EXPERTS)
    assert torch.allclose(w[[0, 5]], torch.tensor([0.75, 0.25]))


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("kindness=+1", "unknown trait 'kindness'.*valid names are openness"),
        ("agreeableness", "no '='"),
        ("agreeableness=lots", "not a number"),
        ("openness_high=-1", ">= 0"),
        ("openness=0", "weight 0"),
        ("", "empty"),
    ],
)
def test_bad_profiles(profile: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_profile(profile, DEFAULT_EXPERTS)


def test_profile_needs_an_expert_the_policy_has() -> None:
    with pytest.raises(ValueError, match="no expert 'openness_low'"):
        parse_profile("openness=-1", ("openness_high",))


def test_unknown_expert_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid names are openness_high"):
        validate_expert_names(["openness_high", "humour_high"])
    with pytest.raises(ValueError, match="more than once"):
        validate_expert_names(["openness_high", "openness_high"])
