"""The real embedded SmolLM2-135M: converted once, loads as a plain safetensors model, and the policy on it works."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from policies import PersonaConfig, PersonaFusePolicy
from policies.embedded import embedded_model_dir
from policies.export import fold_policy
from policies.policy import load_base_model
from tests.conftest import randomize_experts


@pytest.fixture(scope="module")
def smollm2() -> PersonaFusePolicy:
    torch.manual_seed(0)
    return PersonaFusePolicy.from_base(PersonaConfig(base_model=str(embedded_model_dir()))).eval()


@pytest.mark.slow
def test_embedded_folder_is_plain_safetensors() -> None:
    folder = embedded_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))


@pytest.mark.slow
def test_smollm2_fresh_policy_answers_like_the_base(smollm2) -> None:
    chat = [[{"role": "user", "content": "What is the capital of France?"}]]
    [reply] = smollm2.generate(chat, max_new_tokens=12)
    assert "Paris" in reply.text
    [warm] = smollm2.generate(chat, persona="agreeableness=+1", max_new_tokens=12)
    assert warm.text == reply.text  # experts start at zero: any persona is the base until trained


@pytest.mark.slow
def test_smollm2_fold_equals_mixture(smollm2, tmp_path) -> None:
    randomize_experts(smollm2, std=0.02)
    ids = smollm2.tokenizer(["I can't sleep before my exam tomorrow."], return_tensors="pt").input_ids
    weights = torch.softmax(torch.randn(10), -1)
    fold_policy(smollm2, weights, top_k=2).save(tmp_path / "folded")
    peft_model = PeftModel.from_pretrained(load_base_model(str(embedded_model_dir())), tmp_path / "folded")
    kept, idx = weights.topk(2)
    with torch.no_grad(), smollm2.mixture(torch.zeros(1, 10).scatter(1, idx[None], (kept / kept.sum())[None])):
        expected = smollm2.model(input_ids=ids).logits
        with smollm2.adapters_disabled():
            base = smollm2.model(input_ids=ids).logits
        got = peft_model(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
