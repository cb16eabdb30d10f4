from __future__ import annotations

import pytest
import torch

from rlhf.build import build_policy, check_prompts_fit, route_records, tokenize_prompts
from rlhf.config import load_config
from rlhf.prompts import PromptRecord, load_prompts


def test_policies_built_from_one_config_are_identical(tiny_model_dir) -> None:
    cfg = load_config(None, [f"policy.base_model={tiny_model_dir}"])
    a, b = build_policy(cfg), build_policy(cfg)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_bf16_learner_builds_its_policy_in_bf16(tiny_model_dir) -> None:
    """learner.dtype=bf16 loads the base and builds the mixture in bf16 (DeepSpeed would cast them anyway), so a
    rank never holds the model's fp32 copy; the seeded experts are the fp32 build's, rounded."""
    cfg = load_config(None, [f"policy.base_model={tiny_model_dir}", "learner.dtype=bf16"])
    half, full = build_policy(cfg, torch.bfloat16), build_policy(cfg)
    path, layer = next(iter(half.mixture_layers.items()))
    assert layer.base.weight.dtype == layer.lora_A.dtype == torch.bfloat16
    assert torch.equal(layer.lora_A, full.mixture_layers[path].lora_A.bfloat16())


def test_over_long_prompt_names_its_source(tiny_policy) -> None:
    records = [PromptRecord(({"role": "user", "content": "word " * 50},), None, "mine.jsonl:7")]
    with pytest.raises(ValueError, match=r"mine\.jsonl:7: prompt has \d+ tokens"):
        tokenize_prompts(tiny_policy, records, max_tokens=16)
    texts, ids, mask = tokenize_prompts(tiny_policy, records, max_tokens=512)
    assert "word" in texts[0] and ids.shape == mask.shape


def test_prompts_are_checked_against_the_limit_and_the_context_before_anything_starts(tiny_model_dir) -> None:
    """All over-long records in one error (the driver runs this before Ray starts), and a limit that with the
    reply budget overruns the model's 512 positions is an error too."""
    cfg = load_config(None, [f"policy.base_model={tiny_model_dir}", "data.max_prompt_tokens=40"])
    short = PromptRecord(({"role": "user", "content": "I lost my keys."},), None, "p.jsonl:1")
    long = [PromptRecord(({"role": "user", "content": "word " * 60},), None, f"p.jsonl:{i}") for i in (2, 5)]
    check_prompts_fit(cfg, [short])
    with pytest.raises(
        ValueError, match=r"2 prompt\(s\) longer than data.max_prompt_tokens=40: p\.jsonl:2 \(\d+ tokens\); p\.jsonl:5"
    ):
        check_prompts_fit(cfg, [short, *long])
    cfg = load_config(None, [f"policy.base_model={tiny_model_dir}", "data.max_prompt_tokens=480"])
    with pytest.raises(ValueError, match=r"= 544 tokens is more than the base model's context \(512 positions"):
        check_prompts_fit(cfg, [short])


def test_route_records_returns_the_features_the_router_read(tiny_policy) -> None:
    """The update re-routes from these features, so they must be what the router saw: the frozen base's pooled
    prompt states, adapters off, for the same tokens."""
    records = load_prompts("builtin")[:3]
    routed = route_records(tiny_policy, records, max_tokens=512)
    _, ids, mask = tokenize_prompts(tiny_policy, records, max_tokens=512)
    torch.testing.assert_close(routed.features, tiny_policy.situation_features(ids, mask))
    torch.testing.assert_close(routed.weights, tiny_policy.router(routed.features).weights)
    assert routed.weights.shape == (3, len(tiny_policy.experts))
