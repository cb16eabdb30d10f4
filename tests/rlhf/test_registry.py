"""Registry: registration, lookup, and the two errors (duplicate name, unknown name listing the options)."""

from __future__ import annotations

import pytest

from rlhf.advantages import ADVANTAGE_ESTIMATORS
from rlhf.aggregation import LOSS_AGGREGATIONS
from rlhf.kl import KL_ESTIMATORS
from rlhf.registry import Registry


def test_register_returns_function_and_get_finds_it() -> None:
    reg: Registry = Registry("toy")

    @reg.register("double")
    def double(x: int) -> int:
        return 2 * x

    @reg.register("square")
    def square(x: int) -> int:
        return x * x

    assert double(3) == 6  # the decorator returns the function unchanged
    assert reg.get("square") is square
    assert reg.names() == ("double", "square")  # registration order
    assert "double" in reg and "cube" not in reg


def test_duplicate_name_raises() -> None:
    reg: Registry = Registry("toy")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="toy 'a' is already registered"):
        reg.register("a")(lambda: 2)
    assert reg.get("a")() == 1  # the first registration survives


def test_unknown_name_lists_registered() -> None:
    reg: Registry = Registry("toy")
    reg.register("a")(lambda: 1)
    reg.register("b")(lambda: 2)
    with pytest.raises(ValueError, match=r"unknown toy 'c'; registered: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match=r"registered: \(none\)"):
        Registry("empty").get("x")


def test_family_registries_hold_their_names() -> None:
    assert set(ADVANTAGE_ESTIMATORS.names()) >= {"grpo", "gae"}
    assert set(KL_ESTIMATORS.names()) >= {"k1", "k2", "k3"}
    assert set(LOSS_AGGREGATIONS.names()) >= {"token-mean", "seq-mean-token-mean", "seq-sum-const"}
    with pytest.raises(ValueError, match="unknown loss_agg 'sample-mean'; registered: token-mean"):
        LOSS_AGGREGATIONS.get("sample-mean")
