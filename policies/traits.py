"""The Big-Five trait vocabulary: one persona expert per trait pole, and trait profiles.

An expert is named ``<trait>_<pole>``, e.g. ``agreeableness_high``. A trait profile is how a person asks for a
persona by hand: ``"agreeableness=+1,neuroticism=-1"`` puts weight on ``agreeableness_high`` and
``neuroticism_low``; ``"openness_high=0.7,extraversion_low=0.3"`` names poles directly.
"""

from __future__ import annotations

import torch

BIG_FIVE: tuple[str, ...] = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
POLES: tuple[str, ...] = ("high", "low")
DEFAULT_EXPERTS: tuple[str, ...] = tuple(f"{trait}_{pole}" for trait in BIG_FIVE for pole in POLES)


def validate_expert_names(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Checks that every name is a ``<trait>_<pole>`` of the Big Five, with no repeats."""
    if not names:
        raise ValueError(f"experts: the list is empty; valid names are {', '.join(DEFAULT_EXPERTS)}")
    unknown = [n for n in names if n not in DEFAULT_EXPERTS]
    if unknown:
        raise ValueError(f"experts: unknown expert(s) {unknown}; valid names are {', '.join(DEFAULT_EXPERTS)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"experts: {repeated} listed more than once")
    return tuple(names)


def parse_profile(profile: str, experts: tuple[str, ...]) -> torch.Tensor:
    """Turns a trait profile into expert weights (E,) that sum to 1.

    ``trait=+v`` puts weight v on ``trait_high``; ``trait=-v`` puts weight v on ``trait_low``;
    ``trait_pole=v`` (v >= 0) names the pole directly.

    >>> parse_profile("agreeableness=+1,neuroticism=-1", DEFAULT_EXPERTS).tolist()[6:]
    [0.5, 0.0, 0.0, 0.5]
    """
    weights = torch.zeros(len(experts))
    items = [item.strip() for item in profile.split(",") if item.strip()]
    if not items:
        raise ValueError(f"profile {profile!r} is empty; write e.g. 'agreeableness=+1,neuroticism=-1'")
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"profile item {item!r} has no '='; write e.g. 'agreeableness=+1'")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"profile item {item!r}: {raw.strip()!r} is not a number") from None
        if value != value or abs(value) == float("inf"):
            raise ValueError(f"profile item {item!r}: the value must be finite")
        if name in BIG_FIVE:
            expert = f"{name}_{'high' if value >= 0 else 'low'}"
            value = abs(value)
        elif name in DEFAULT_EXPERTS:
            if value < 0:
                raise ValueError(f"profile item {item!r}: a pole's weight must be >= 0")
            expert = name
        else:
            valid = ", ".join(BIG_FIVE + DEFAULT_EXPERTS)
            raise ValueError(f"profile item {item!r}: unknown trait {name!r}; valid names are {valid}")
        if expert not in experts:
            raise ValueError(f"profile item {item!r}: this policy has no expert {expert!r} (it has {experts})")
        weights[experts.index(expert)] += value
    total = weights.sum()
    if total <= 0:
        raise ValueError(f"profile {profile!r} gives every expert weight 0")
    return weights / total
