from __future__ import annotations

import json

import pytest

from policies.situations import SituationDataError, load_situations, spread_over_categories
from policies.traits import DEFAULT_EXPERTS


def _write(tmp_path, rows):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_parse_and_give_target_vectors(tmp_path) -> None:
    row = {"id": "a", "category": "c", "situation": "hi", "target": {"openness_high": 0.6, "neuroticism_low": 0.4},
           "split": "train"}  # fmt: skip
    (s,) = load_situations(_write(tmp_path, [row]))
    vector = s.target_vector(DEFAULT_EXPERTS)
    assert vector.sum().item() == pytest.approx(1.0) and s.primary == "openness_high"
    assert load_situations(_write(tmp_path, [row]), split="heldout") == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": {"openness_high": 0.5}}, "sum to 0.5"),
        ({"target": {"openness_high": 0.5, "openness_low": 0.5}}, "both poles"),
        ({"target": {"kindness_high": 1.0}}, "not one of"),
        ({"split": "test"}, "split must be"),
        ({"situation": ""}, "'situation' must be a non-empty string"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, change, message) -> None:
    good = {"id": "a", "category": "c", "situation": "hi", "target": {"openness_high": 1.0}, "split": "train"}
    path = _write(tmp_path, [good, {**good, "id": "b", **change}])
    with pytest.raises(SituationDataError, match=rf"s\.jsonl: line 2: .*{message}"):
        load_situations(path)


def test_a_small_subset_is_spread_over_the_categories() -> None:
    situations = load_situations("builtin", "train")
    categories = list(dict.fromkeys(s.category for s in situations))
    assert situations[len(categories) - 1].category == categories[0]  # the file's head is one category
    picked = spread_over_categories(situations, len(categories) + 2)
    assert [s.category for s in picked] == categories + categories[:2]  # one per category in turn, then again
    assert picked[0] == situations[0]
    assert picked[len(categories)] == situations[1]  # each category keeps its file order
    assert spread_over_categories(situations, None) == situations == spread_over_categories(situations, 10_000)
