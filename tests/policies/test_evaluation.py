"""Evaluation pieces: option parsing, the MC scorer on a known answer, refusal detection."""

from __future__ import annotations

import json

import pytest
import torch

from policies.evaluation import (
    MCItem,
    ShortAnswerItem,
    answer_ids,
    chat_prefix,
    evaluate_short_answer,
    is_refusal,
    is_short_answer_file,
    load_mc,
    load_short_answer,
    mc_loglik_choice,
    mc_prompt,
    parse_choice,
    short_answer_correct,
)


def test_parse_choice_and_refusals() -> None:
    assert parse_choice("The answer is B.", 4) == 1 and parse_choice("b) because", 4) == 1
    assert parse_choice("Option 3", 4) == 2 and parse_choice("none of these", 2) is None
    assert parse_choice("As a friend, I'd pick C", 4) == 2  # "a" and "I" are words here, not options
    assert parse_choice("I would choose B", 10) == 1 and parse_choice("Answer: (d)", 4) == 3
    assert parse_choice("The answer is a hard one", 4) is None
    assert parse_choice("The answer is C because it helps", 4) == 2 and parse_choice("B is the kindest option", 4) == 1
    assert parse_choice("I choose C because", 4) == 2 and parse_choice("A. Because it is kind", 4) == 0
    assert is_refusal("I'm sorry, but I can't help with that.") and not is_refusal("I can see why that hurts.")


def test_load_mc_errors_name_the_line(tmp_path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer_index": 1}) + "\n"
                    + json.dumps({"question": "q", "choices": ["a"], "answer_index": 0}) + "\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"mc\.jsonl: line 2"):
        load_mc(path)
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer_index": 1}\n{"question": \n')
    with pytest.raises(ValueError, match=r"mc\.jsonl: line 2: invalid JSON"):
        load_mc(path)
    path.write_text(json.dumps({"question": "q", "choices": list("abcdefghijk"), "answer_index": 0}) + "\n")
    with pytest.raises(ValueError, match=r"mc\.jsonl: line 1: 11 choices; at most 10"):
        load_mc(path)


def test_mc_and_short_answer_files_may_be_parquet(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"question": "q", "choices": ["a", "b"], "answer_index": 1}]), tmp_path / "m.parquet"
    )
    pq.write_table(pa.Table.from_pylist([{"question": "2 + 2?", "answer": "4"}]), tmp_path / "s.parquet")
    assert load_mc(tmp_path / "m.parquet") == [MCItem("q", ("a", "b"), 1)]
    assert is_short_answer_file(tmp_path / "s.parquet") and not is_short_answer_file(tmp_path / "m.parquet")
    assert load_short_answer(tmp_path / "s.parquet") == [ShortAnswerItem("2 + 2?", ("4",))]


def test_short_answer_matching() -> None:
    assert short_answer_correct("3 + 4 = 7, so the answer is 12.", ("12",))  # the last number counts
    assert not short_answer_correct("The answer is 12, not 7.", ("12",))
    assert short_answer_correct("That makes 1,250 dollars.", ("1250",)) and short_answer_correct("x = 2.50", ("2.5",))
    assert short_answer_correct("I think it's Paris!", ("paris", "Paris, France"))
    assert not short_answer_correct("Parisian food is great.", ("Paris",))  # whole words only
    assert not short_answer_correct("no idea", ("42",))


def test_load_short_answer_and_format_detection(tmp_path) -> None:
    good = tmp_path / "short.jsonl"
    rows = [
        {"question": "2 + 2?", "answer": 4},
        {"scenario": "s", "question": "Capital of Italy?", "answer": ["Rome", "Roma"]},
    ]
    good.write_text("".join(json.dumps(row) + "\n" for row in rows))
    items = load_short_answer(good)
    assert items == [ShortAnswerItem("2 + 2?", ("4",)), ShortAnswerItem("Capital of Italy?", ("Rome", "Roma"), "s")]
    assert is_short_answer_file(good)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer_index": 1}) + "\n")
    assert not is_short_answer_file(mc)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n" + json.dumps({"question": "q", "answer": []}))
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: needs a 'question' string and an 'answer'"):
        load_short_answer(bad)


def test_answers_are_read_as_the_tokens_they_are_in_context(tiny_policy) -> None:
    """SmolLM2's byte-level BPE folds the space into a letter ("Answer: C" -> ..., ":", "ĠC"), so the MC scorer ends
    the prompt in "Answer:" and compares " A", " B", " C"; digits stay separate tokens ("Answer: " then "3"). Either
    way the scored token is the one the full answer text encodes to."""
    tok = tiny_policy.tokenizer
    item = MCItem("Which is a fruit?", ("a chair", "a lamp", "an apple"), 2)
    prefix, ids = answer_ids(tiny_policy, mc_prompt(item), "ABC")
    assert prefix == "Answer:" and tok.convert_ids_to_tokens(ids) == ["ĠA", "ĠB", "ĠC"]
    text = chat_prefix(tiny_policy, mc_prompt(item), prefix)
    assert tok.encode(text + " C", add_special_tokens=False)[-1] == ids[2]
    prefix, ids = answer_ids(tiny_policy, "Rate it 1-5.", "12345")
    assert prefix == "Answer: " and tok.convert_ids_to_tokens(ids) == list("12345")
    with pytest.raises(ValueError, match="answers apple pie, lemon tart are not single tokens"):
        answer_ids(tiny_policy, mc_prompt(item), ["apple pie", "lemon tart"])


@pytest.mark.slow
def test_short_answer_gets_a_known_answer_right_with_the_real_model() -> None:
    from policies import PersonaConfig, PersonaFusePolicy
    from policies.embedded import embedded_model_dir

    policy = PersonaFusePolicy.from_base(PersonaConfig(base_model=str(embedded_model_dir())))
    items = [ShortAnswerItem("What is the capital of France? Answer in one word.", ("Paris",)),
             ShortAnswerItem("What is the capital of France? Answer in one word.", ("Berlin",))]  # fmt: skip
    result = evaluate_short_answer(policy, items, None, max_new_tokens=12)
    assert result == {"items": 2, "accuracy": 0.5}  # right on the true answer, wrong on the false one


@pytest.mark.slow
def test_mc_loglik_gets_a_known_answer_right_with_the_real_model() -> None:
    from policies import PersonaConfig, PersonaFusePolicy
    from policies.embedded import embedded_model_dir

    policy = PersonaFusePolicy.from_base(PersonaConfig(base_model=str(embedded_model_dir())))
    item = MCItem("What is the capital of France?", ("a banana", "Paris", "the number seven"), 1)
    assert mc_loglik_choice(policy, item, None) == 1
    assert mc_loglik_choice(policy, item, torch.full((len(policy.experts),), 0.1)) == 1  # B = 0: same as base
