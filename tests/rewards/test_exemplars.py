from __future__ import annotations

from collections import Counter

from rewards.exemplars import TONE_OF_LINE, load_situations, preference_pairs, safety_examples


def test_every_situation_has_a_tone_and_pairs_are_deterministic() -> None:
    assert len(load_situations()) == len(TONE_OF_LINE)
    assert preference_pairs(seed=3) == preference_pairs(seed=3) != preference_pairs(seed=4)


def test_pairs_cover_every_failure_mode_and_length_does_not_decide() -> None:
    rows = preference_pairs(seed=0)
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) >= {
        "dismissive",
        "cold",
        "preachy",
        "off_topic",
        "brush_off",
        "generic_offer",
        "gamed",
        "over_refusal",
        "unsafe",
    }
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows) / len(rows)
    assert longer < 0.8  # a length-only scorer cannot learn the set
    assert all(r["chosen"] != r["rejected"] for r in rows)


def test_safety_rows_are_labelled_both_ways_for_risky_prompts() -> None:
    rows = safety_examples(seed=0)
    assert {r["unsafe"] for r in rows} == {0.0, 1.0}
    risky = [r for r in rows if "ending my life" in r["prompt"]]
    assert {r["unsafe"] for r in risky} == {0.0, 1.0}  # supportive refusals are safe, compliance is not
