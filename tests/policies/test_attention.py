"""fp32 matmul attention: the same logits and gradients as sdpa in fp32, through left padding, grouped key/value
heads and the shared-prompt KV path; under bf16 autocast it stays closer to the all-fp32 result than sdpa does."""

from __future__ import annotations

import torch

from policies.attention import FP32_ATTENTION, register_fp32_attention
from policies.policy import bf16_autocast
from tests.conftest import randomize_experts
from tests.policies.test_policy import grouped_rows

ROWS = torch.tensor([0, 1, 0, 1, 0, 1])


def outputs(policy, ids, mask, groups, autocast: bool = False):
    """Reply logits and the first mixture layer's expert gradients under top-2 routing, per group."""
    policy.zero_grad()
    per_prompt = torch.zeros(2, 10)
    per_prompt[0, [1, 4]], per_prompt[1, [2, 9]] = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])
    with policy.mixture(per_prompt[ROWS]), bf16_autocast(autocast):
        logits, _ = policy.response_outputs(ids, mask, 5, groups=groups)
    reply_mask = mask[:, -5:].bool()
    (logits.logsumexp(-1) * reply_mask).sum().backward()
    layer = next(iter(policy.mixture_layers.values()))
    return logits[reply_mask].detach(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone()


def test_fp32_attention_equals_sdpa_in_fp32(tiny_policy, prompt_batch) -> None:
    assert tiny_policy.model.config.num_key_value_heads < tiny_policy.model.config.num_attention_heads  # grouped
    randomize_experts(tiny_policy, std=0.2)
    ids, mask, groups = grouped_rows(prompt_batch)  # left-padded prompts, replies with padding
    assert not mask.all()
    for shared in (None, groups):
        sdpa = outputs(tiny_policy, ids, mask, shared)
        tiny_policy.model.set_attn_implementation(register_fp32_attention())
        assert tiny_policy.model.config._attn_implementation == FP32_ATTENTION
        ours = outputs(tiny_policy, ids, mask, shared)
        tiny_policy.model.set_attn_implementation("sdpa")
        assert sdpa[1].abs().sum() > 0
        for a, b in zip(ours, sdpa, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_under_autocast_it_stays_closer_to_fp32_than_sdpa(tiny_policy, prompt_batch) -> None:
    randomize_experts(tiny_policy, std=0.2)
    ids, mask, groups = grouped_rows(prompt_batch)
    exact = outputs(tiny_policy, ids, mask, groups)[0]
    sdpa_error = (outputs(tiny_policy, ids, mask, groups, autocast=True)[0] - exact).abs().mean()
    tiny_policy.model.set_attn_implementation(register_fp32_attention())
    ours_error = (outputs(tiny_policy, ids, mask, groups, autocast=True)[0] - exact).abs().mean()
    assert 0 < ours_error <= sdpa_error, (ours_error, sdpa_error)


def test_a_bf16_model_runs_with_it(tiny_model_dir, prompt_batch) -> None:
    """learner.dtype=bf16 (no autocast): the output comes back in bf16 for the bf16 o_proj."""
    from policies.config import PersonaConfig
    from policies.policy import PersonaFusePolicy

    policy = PersonaFusePolicy.from_base(PersonaConfig(base_model=str(tiny_model_dir)), torch.bfloat16)
    ids, mask, _ = grouped_rows(prompt_batch)
    sdpa = policy.ref_logprobs(ids, mask, 5)
    policy.model.set_attn_implementation(register_fp32_attention())
    ours = policy.ref_logprobs(ids, mask, 5)
    reply_mask = mask[:, -5:].bool()
    torch.testing.assert_close(ours[reply_mask], sdpa[reply_mask], atol=0.1, rtol=0.05)
