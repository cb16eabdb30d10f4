"""The shipped persona situations (policies/persona_data/situations.jsonl) keep to the labelling rules in
policies/persona_data/LABELLING.md. Fast: reads the JSONL only, no model."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from policies.traits import BIG_FIVE, DEFAULT_EXPERTS

DATA = Path(__file__).parents[2] / "policies" / "persona_data" / "situations.jsonl"
CATEGORIES = (
    "mental_health_support",
    "customer_service",
    "workplace",
    "family",
    "friendship",
    "celebration",
    "conflict",
)
ID_PATTERN = re.compile(r"^[a-z]+-\d{3}$")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = [line for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def primary(row: dict) -> str:
    """The largest-weight pole; a tie goes to the pole listed first (as ``Situation.primary`` does)."""
    return max(row["target"], key=row["target"].get)


def test_enough_rows_with_the_expected_fields(rows: list[dict]) -> None:
    assert len(rows) >= 300
    for row in rows:
        assert set(row) == {"id", "category", "situation", "target", "split"}, row.get("id")
        assert row["split"] in ("train", "heldout"), row["id"]


def test_categories_are_known_and_each_has_at_least_40(rows: list[dict]) -> None:
    counts = Counter(row["category"] for row in rows)
    assert set(counts) == set(CATEGORIES), set(counts) ^ set(CATEGORIES)
    small = {c: n for c, n in counts.items() if n < 40}
    assert not small, f"categories with fewer than 40 situations: {small}"


def test_ids_are_unique_and_well_formed(rows: list[dict]) -> None:
    ids = [row["id"] for row in rows]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"repeated ids: {repeated}"
    bad = [i for i in ids if not ID_PATTERN.match(i)]
    assert not bad, f"ids not of the form <category-short>-<3 digits>: {bad}"


def test_situations_are_15_to_80_words(rows: list[dict]) -> None:
    bad = {}
    for row in rows:
        text = row["situation"]
        n = len(text.split()) if isinstance(text, str) else 0
        if not 15 <= n <= 80:
            bad[row["id"]] = n
    assert not bad, f"situations outside 15-80 words: {bad}"


def test_targets_are_valid_pole_weights(rows: list[dict]) -> None:
    for row in rows:
        target = row["target"]
        assert isinstance(target, dict) and 1 <= len(target) <= 3, row["id"]
        unknown = [pole for pole in target if pole not in DEFAULT_EXPERTS]
        assert not unknown, f"{row['id']}: unknown poles {unknown}"
        for pole, weight in target.items():
            assert isinstance(weight, int | float) and not isinstance(weight, bool), f"{row['id']}: {pole}"
            assert weight > 0, f"{row['id']}: {pole} has weight {weight}"
        total = sum(target.values())
        assert math.isclose(total, 1.0, abs_tol=1e-6), f"{row['id']}: weights sum to {total}"
        both = [t for t in BIG_FIVE if f"{t}_high" in target and f"{t}_low" in target]
        assert not both, f"{row['id']}: both poles of {both}"


def test_every_pole_is_primary_at_least_15_times(rows: list[dict]) -> None:
    counts = Counter(primary(row) for row in rows)
    short = {pole: counts.get(pole, 0) for pole in DEFAULT_EXPERTS if counts.get(pole, 0) < 15}
    assert not short, f"poles that are primary fewer than 15 times: {short}"


def test_heldout_is_about_a_fifth_of_each_category(rows: list[dict]) -> None:
    for category in CATEGORIES:
        in_cat = [row for row in rows if row["category"] == category]
        share = sum(row["split"] == "heldout" for row in in_cat) / len(in_cat)
        assert 0.18 <= share <= 0.22, f"{category}: held-out share {share:.3f}"


def test_no_two_situations_open_with_the_same_eight_words(rows: list[dict]) -> None:
    seen: dict[str, str] = {}
    clashes = []
    for row in rows:
        opening = " ".join(row["situation"].lower().split()[:8])
        if opening in seen:
            clashes.append((seen[opening], row["id"]))
        seen.setdefault(opening, row["id"])
    assert not clashes, f"situations with identical first 8 words: {clashes}"
