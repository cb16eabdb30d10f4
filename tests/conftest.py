"""Shared fixtures: a tiny random Llama (built locally, never downloaded) on the SmolLM2 tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from policies import PersonaConfig, PersonaFusePolicy
from policies.embedded import embedded_model_dir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with the embedded model's tokenizer, saved as safetensors at ``path``."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention needs >= 32
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.1,  # peaky logits, so greedy decoding has clear winners to compare
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def randomize_experts(policy: PersonaFusePolicy, seed: int = 0, std: float = 0.05) -> None:
    """Non-zero B matrices, so experts actually change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in policy.mixture_layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * std)


@pytest.fixture()
def tiny_policy(tiny_model_dir: Path) -> PersonaFusePolicy:
    torch.manual_seed(0)
    return PersonaFusePolicy.from_base(PersonaConfig(base_model=str(tiny_model_dir)))


@pytest.fixture()
def prompt_batch(tiny_policy: PersonaFusePolicy) -> dict[str, torch.Tensor]:
    """Two left-padded prompts + responses, as the RL loop lays them out: (B, P+T) with T = 5."""
    tok = tiny_policy.tokenizer
    prompts = tok(["My friend forgot my birthday.", "I got the job!"], return_tensors="pt", padding=True)
    responses = torch.tensor([[tok.eos_token_id - 1, 300, 301, 302, 303], [400, 401, 402, 403, 404]])
    return {
        "prompt_ids": prompts.input_ids,
        "prompt_mask": prompts.attention_mask,
        "input_ids": torch.cat([prompts.input_ids, responses], 1),
        "attention_mask": torch.cat([prompts.attention_mask, torch.ones_like(responses)], 1),
        "response_len": responses.shape[1],
    }


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the tests that need it (real Ray; 4 logical CPUs on a 2-core host)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_job_overrides(tiny_model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [f"policy.base_model={tiny_model_dir}", f"run.output_dir={output_dir}", *extra]


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer: a fast stand-in for reward-model encoders."""
    from transformers import BertConfig, BertModel

    from rewards.training import base_model_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(base_model_path("minilm"))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
