"""The reward-model component: loading rules, head combination, and the shared pair encoding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rewards.model import RewardModel, encode_pairs, resolve_reward_path, tokenize_pairs


@pytest.fixture(scope="module")
def two_head_dir(tmp_path_factory, tiny_encoder_dir):
    path = tmp_path_factory.mktemp("rm2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_encoder_dir,
        num_labels=2,
        id2label={0: "empathy", 1: "helpfulness"},
        label2id={"empathy": 0, "helpfulness": 1},
    )
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(path)
    return path


def test_heads_are_combined_by_the_configured_weights(two_head_dir) -> None:
    prompts, replies = ["I lost my keys.", "I got the job!"], ["That's annoying.", "Congratulations!"]
    rm = RewardModel(path=str(two_head_dir), head_weights={"empathy": 0.75, "helpfulness": 0.25})
    heads = rm.head_scores(prompts, replies)  # (2, 2) raw logits: not a sigmoid-trained model
    assert heads.shape == (2, 2)
    torch.testing.assert_close(
        torch.tensor(rm(prompts=prompts, completions=replies)), heads @ torch.tensor([0.75, 0.25])
    )
    equal = RewardModel(path=str(two_head_dir))  # default: equal weights summing to 1
    torch.testing.assert_close(torch.tensor(equal(prompts=prompts, completions=replies)), heads.mean(-1))
    one_at_a_time = torch.cat([rm.head_scores([p], [r]) for p, r in zip(prompts, replies, strict=True)])
    torch.testing.assert_close(one_at_a_time, heads, atol=1e-5, rtol=1e-5)  # padding does not change scores


def test_bad_options_and_folders_are_clear_errors(two_head_dir, tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"head_weights names \['warmth'\]; .* has heads \['empathy', 'helpfulness'\]"):
        RewardModel(path=str(two_head_dir), head_weights={"warmth": 1.0})
    with pytest.raises(FileNotFoundError, match="no HF model folder"):
        RewardModel(path=str(tmp_path / "missing"))
    monkeypatch.setenv("PERSONAFUSE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make setup"):
        resolve_reward_path("embedded-social")


def test_pair_encoding_truncates_longest_first_and_pads(tiny_encoder_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    ids = tokenize_pairs(tok, ["short prompt", "p"], ["word " * 100, "reply"], max_length=32)
    assert len(ids[0]) == 32 and ids[0][:4] == tok("short prompt", "x")["input_ids"][:4]  # the prompt survives
    batch = encode_pairs(tok, ["short prompt", "p"], ["word " * 100, "reply"], max_length=32)
    assert batch["input_ids"].shape == (2, 32) and batch["attention_mask"][1].sum() == len(ids[1])
