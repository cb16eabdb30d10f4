from __future__ import annotations

import pytest
import torch

from rlhf.build import build_policy, tokenize_prompts
from rlhf.config import load_config
from rlhf.prompts import PromptRecord


def test_policies_built_from_one_config_are_identical(tiny_model_dir) -> None:
    cfg = load_config(None, [f"policy.base_model={tiny_model_dir}"])
    a, b = build_policy(cfg), build_policy(cfg)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_over_long_prompt_names_its_source(tiny_policy) -> None:
    records = [PromptRecord(({"role": "user", "content": "word " * 50},), None, "mine.jsonl:7")]
    with pytest.raises(ValueError, match=r"mine\.jsonl:7: prompt has \d+ tokens"):
        tokenize_prompts(tiny_policy, records, max_tokens=16)
    texts, ids, mask = tokenize_prompts(tiny_policy, records, max_tokens=512)
    assert "word" in texts[0] and ids.shape == mask.shape
