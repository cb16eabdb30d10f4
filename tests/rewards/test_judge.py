"""The generative judge: expected-score math by hand, the component on a tiny random Llama, its errors, HF vs vLLM."""

from __future__ import annotations

import doctest
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rewards.judge
from rewards.base import get_reward
from rewards.judge import RUBRICS, Judge, expected_score, load_rubric, render, score_tokens, situation_of, unit_score

PROMPTS = [
    "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nMy dog died yesterday.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "I failed my driving test again.",
    "My best friend forgot my birthday.",
]
REPLIES = [
    "I'm so sorry. Losing a dog you loved is heartbreaking.",
    "Get over it.",
    "That must hurt. Would you like to talk about it? {reply} stays as typed.",
]
JUDGE_OPTIONS = {"dtype": "float32", "max_prompt_tokens": 400, "batch_size": 2}  # tiny Llama: 512 positions


@pytest.fixture(scope="module")
def tiny_judge(tiny_model_dir: Path) -> Judge:
    return Judge(model=str(tiny_model_dir), engine="hf", **JUDGE_OPTIONS)


# --- math -------------------------------------------------------------------------------------------------------------


def test_doctests() -> None:
    result = doctest.testmod(rewards.judge)
    assert result.attempted >= 1 and result.failed == 0


def test_expected_score_by_hand() -> None:
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = torch.full((2, 8), -30.0)  # (B, V); scores 1..4 are tokens 5, 2, 7, 3
    logits[:, [5, 2, 7, 3]] = probs.log()
    logits[1, 0] = 10.0  # most of row 1's mass is on a non-score token: ignored after renormalising
    logits[1, [5, 2, 7, 3]] += 4.0  # a shift shared by every score token cancels
    expected = expected_score(logits, [5, 2, 7, 3])
    assert torch.allclose(expected, torch.tensor([3.0, 3.0]), atol=1e-5)  # 0.1 + 0.4 + 0.9 + 1.6
    assert torch.allclose(unit_score(expected, 4), torch.tensor([2 / 3, 2 / 3]), atol=1e-6)


def test_expected_score_extremes_and_log_probs() -> None:
    logits = torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.0, 50.0], [1.0, 1.0, 1.0]])  # (B, V), V = K = 3
    assert torch.allclose(expected_score(logits, [0, 1, 2]), torch.tensor([1.0, 3.0, 2.0]))
    assert torch.allclose(expected_score(logits.log_softmax(-1), [0, 1, 2]), expected_score(logits, [0, 1, 2]))
    assert unit_score(torch.tensor([1.0, 3.0]), 3).tolist() == [0.0, 1.0]


# --- rubric text ------------------------------------------------------------------------------------------------------


def test_builtin_rubrics_render_system_and_user() -> None:
    assert set(RUBRICS) >= {"empathy", "social_appropriateness", "helpfulness"}
    for name in RUBRICS:
        system, user = render(load_rubric(name), "SIT", "REP {situation}", 7)
        assert "1 =" in system and "7 =" in system and "{" not in system
        assert "SIT" in user and "REP {situation}" in user and "1 to 7" in user  # one pass: reply braces stay


def test_situation_is_the_last_user_turn() -> None:
    assert situation_of(PROMPTS[0]) == "My dog died yesterday."
    llama3 = "<|start_header_id|>user<|end_header_id|>\n\nI lost my keys.<|eot_id|><|start_header_id|>assistant"
    assert situation_of(llama3) == "I lost my keys."
    assert situation_of("  plain text  ") == "plain text"


def test_rubric_file_needs_both_placeholders(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("Rate the reply.\nReply: {reply}\n")
    with pytest.raises(ValueError, match=r"lacks the placeholder\(s\) \{situation\}"):
        Judge(model=str(tiny_model_dir), rubric=str(bad), **JUDGE_OPTIONS)
    with pytest.raises(ValueError, match="neither a built-in rubric"):
        Judge(model=str(tiny_model_dir), rubric="empathie", **JUDGE_OPTIONS)


def test_rubric_file_is_used(tmp_path: Path, tiny_model_dir: Path) -> None:
    good = tmp_path / "kind.txt"
    good.write_text("Rate kindness.\nS: {situation}\nR: {reply}\nFrom 1 to {scale}?\n")
    text = Judge(model=str(tiny_model_dir), rubric=str(good), **JUDGE_OPTIONS).prompt_text("SIT", "REP")
    assert text.startswith("<|im_start|>system\nRate kindness.<|im_end|>\n<|im_start|>user\nS: SIT\nR: REP\n")
    assert text.endswith("From 1 to 5?<|im_end|>\n<|im_start|>assistant\nScore: ")


# --- the component on the tiny model ----------------------------------------------------------------------------------


def test_registered_and_scores_in_unit_range(tiny_judge: Judge) -> None:
    assert get_reward("judge") is Judge
    scores = tiny_judge(prompts=PROMPTS, completions=REPLIES, category=[None] * 3)
    assert len(scores) == 3 and all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert tiny_judge(prompts=PROMPTS, completions=REPLIES) == scores  # deterministic
    alone = [tiny_judge(prompts=[p], completions=[c])[0] for p, c in zip(PROMPTS, REPLIES, strict=True)]
    assert alone == pytest.approx(scores, abs=1e-5)  # left padding in a batch changes nothing
    assert tiny_judge(prompts=[], completions=[]) == []


def test_score_tokens_are_checked_in_context(tiny_judge: Judge, tiny_model_dir: Path) -> None:
    tok = tiny_judge.tokenizer
    assert tok.convert_ids_to_tokens(tiny_judge.score_token_ids) == ["1", "2", "3", "4", "5"]
    assert tiny_judge.prefix == "Score: "
    with pytest.raises(
        ValueError,
        match=r"scale=10: .* scores 1..10 are not single tokens \(after 'Score: ': 10 not one token; after 'Score:'",
    ):
        Judge(model=str(tiny_model_dir), scale=10, **JUDGE_OPTIONS)


def test_byte_level_bpe_scores_follow_score_colon() -> None:
    """GPT-2-style tokenizers fold the space into the digit ("Score: 1" -> "Score", ":", "Ġ1"), so "Score: " ends
    in a lone "Ġ" no score follows; the judge then ends its prompt with "Score:" and reads " 1".." 5"."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([f"Rate it. Score: {k}" for k in range(1, 6)] * 20, trainer)
    assert tok.encode("Score: ").tokens[-1] == "Ġ" and tok.encode("Score: 1").tokens[-1] == "Ġ1"
    prefix, ids = score_tokens(lambda t: tok.encode(t).ids, lambda p: "Rate it. " + p, 5, "a BPE")
    assert prefix == "Score:" and [tok.id_to_token(i) for i in ids] == [f"Ġ{k}" for k in range(1, 6)]


def test_overlong_prompt_is_an_error_naming_its_index(tiny_judge: Judge) -> None:
    long_reply = "so sad " * 300
    with pytest.raises(ValueError, match=r"judge prompt 1 has \d+ tokens, more than max_prompt_tokens=400"):
        tiny_judge(prompts=PROMPTS[:2], completions=[REPLIES[0], long_reply])


def test_bad_options(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = str(tiny_model_dir)
    with pytest.raises(ValueError, match="scale must be >= 2"):
        Judge(model=model, scale=1)
    with pytest.raises(ValueError, match="engine must be"):
        Judge(model=model, engine="tgi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set max_prompt_tokens <= 511"):
        Judge(model=model, max_prompt_tokens=1024)
    with pytest.raises(FileNotFoundError, match="no HF model folder"):
        Judge(model=str(tmp_path))


# --- engines agree ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_vllm_scores_match_hf(tiny_judge: Judge, tiny_model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "tests.rewards.vllm_judge_check", str(tiny_model_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    vllm_scores = json.loads(done.stdout.strip().splitlines()[-1])["scores"]
    hf_scores = tiny_judge(prompts=PROMPTS, completions=REPLIES)
    assert all(math.isfinite(s) for s in vllm_scores)
    assert vllm_scores == pytest.approx(hf_scores, abs=1e-3)
