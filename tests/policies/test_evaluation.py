"""Evaluation pieces: probe scoring, option parsing, the MC scorer on a known answer, refusal detection."""

from __future__ import annotations

import json

import pytest
import torch

from policies.evaluation import (
    PROBES,
    MCItem,
    is_refusal,
    load_mc,
    mc_loglik_choice,
    parse_choice,
    probe_scores,
    trait_direction_table,
)
from policies.traits import BIG_FIVE


def test_probes_are_balanced_and_scores_lie_on_the_scale(tiny_policy) -> None:
    for trait in BIG_FIVE:
        keyed = [k for t, _, k in PROBES if t == trait]
        assert keyed.count(1) == keyed.count(-1) >= 2
    scores = probe_scores(tiny_policy, None)
    assert set(scores) == set(BIG_FIVE) and all(1.0 <= v <= 5.0 for v in scores.values())
    table = trait_direction_table(tiny_policy)
    assert [r["expert"] for r in table] == list(tiny_policy.experts)
    assert all(r["delta"] == pytest.approx(0.0, abs=1e-5) for r in table)  # fresh experts (B = 0) change nothing


def test_parse_choice_and_refusals() -> None:
    assert parse_choice("The answer is B.", 4) == 1 and parse_choice("b) because", 4) == 1
    assert parse_choice("Option 3", 4) == 2 and parse_choice("none of these", 2) is None
    assert is_refusal("I'm sorry, but I can't help with that.") and not is_refusal("I can see why that hurts.")


def test_load_mc_errors_name_the_line(tmp_path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer_index": 1}) + "\n"
                    + json.dumps({"question": "q", "choices": ["a"], "answer_index": 0}) + "\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"mc\.jsonl: line 2"):
        load_mc(path)


@pytest.mark.slow
def test_mc_loglik_gets_a_known_answer_right_with_the_real_model() -> None:
    from policies import PersonaConfig, PersonaFusePolicy
    from policies.embedded import embedded_model_dir

    policy = PersonaFusePolicy.from_base(PersonaConfig(base_model=str(embedded_model_dir())))
    item = MCItem("What is the capital of France?", ("a banana", "Paris", "the number seven"), 1)
    assert mc_loglik_choice(policy, item, None) == 1
    assert mc_loglik_choice(policy, item, torch.full((len(policy.experts),), 0.1)) == 1  # B = 0: same as base
