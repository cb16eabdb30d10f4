"""Save/load, PEFT compatibility of each expert, and the exact fold of a mixture into one LoRA."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from policies import PersonaFusePolicy
from policies.export import fold_policy, vllm_rank
from policies.policy import load_base_model
from tests.conftest import randomize_experts


def logits(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_save_load_round_trip_is_exact(tiny_policy, prompt_batch, tmp_path) -> None:
    randomize_experts(tiny_policy)
    with torch.no_grad():
        tiny_policy.router.mlp[-1].bias.normal_()  # a router that differs from a fresh init
    tiny_policy.save_pretrained(tmp_path / "policy")
    assert json.loads((tmp_path / "policy" / "persona_config.json").read_text())["rank"] == 8
    restored = PersonaFusePolicy.from_pretrained(tmp_path / "policy")
    for p, q in zip(tiny_policy.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    route = restored.route(prompt_batch["prompt_ids"], prompt_batch["prompt_mask"])
    expected = tiny_policy.route(prompt_batch["prompt_ids"], prompt_batch["prompt_mask"])
    assert torch.equal(route.weights, expected.weights)
    with tiny_policy.mixture(expected.weights), restored.mixture(route.weights):
        assert torch.equal(logits(restored.model, prompt_batch), logits(tiny_policy.model, prompt_batch))


def test_saving_over_an_existing_policy_replaces_it(tiny_policy, tmp_path) -> None:
    tiny_policy.save_pretrained(tmp_path / "policy")
    randomize_experts(tiny_policy, seed=3)
    tiny_policy.save_pretrained(tmp_path / "policy")
    restored = PersonaFusePolicy.from_pretrained(tmp_path / "policy")
    layer = next(iter(restored.mixture_layers.values()))
    assert torch.equal(layer.lora_B, next(iter(tiny_policy.mixture_layers.values())).lora_B)
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]  # no staging leftovers


def test_peft_loads_one_expert_with_identical_logits(tiny_policy, tiny_model_dir, prompt_batch, tmp_path) -> None:
    randomize_experts(tiny_policy)
    tiny_policy.save_pretrained(tmp_path / "policy")
    expert = tiny_policy.experts.index("extraversion_low")
    peft_model = PeftModel.from_pretrained(
        load_base_model(str(tiny_model_dir)), tmp_path / "policy/experts/extraversion_low"
    )
    one_hot = torch.zeros(2, 10)
    one_hot[:, expert] = 1.0
    with tiny_policy.mixture(one_hot):
        ours = logits(tiny_policy.model, prompt_batch)
    torch.testing.assert_close(logits(peft_model, prompt_batch), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("top_k", "for_vllm", "rank"), [(None, False, 80), (2, False, 16), (3, True, 32)])
def test_fold_equals_mixture(tiny_policy, tiny_model_dir, prompt_batch, tmp_path, top_k, for_vllm, rank) -> None:
    randomize_experts(tiny_policy)
    weights = torch.softmax(torch.randn(10), -1)
    folded = fold_policy(tiny_policy, weights, top_k=top_k, for_vllm=for_vllm)
    folded.save(tmp_path / "folded")
    assert json.loads((tmp_path / "folded/adapter_config.json").read_text())["r"] == rank
    peft_model = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), tmp_path / "folded")
    kept, idx = weights.topk(top_k or 10)
    mixture = torch.zeros(10).scatter(0, idx, kept / kept.sum()).expand(2, 10)
    with tiny_policy.mixture(mixture):
        expected = logits(tiny_policy.model, prompt_batch)
    torch.testing.assert_close(logits(peft_model, prompt_batch), expected, atol=1e-5, rtol=1e-5)


def test_folded_adapter_saves_in_the_serving_dtype(tiny_policy, tmp_path) -> None:
    """The vLLM rollout writes its folds in its model dtype (half the bytes in bf16); the values are the fp32
    fold's, rounded once."""
    from safetensors.torch import load_file

    randomize_experts(tiny_policy)
    folded = fold_policy(tiny_policy, torch.softmax(torch.randn(10), -1), top_k=2)
    folded.save(tmp_path / "bf16", torch.bfloat16)
    saved = load_file(str(tmp_path / "bf16/adapter_model.safetensors"))
    assert saved.keys() == folded.tensors.keys()
    for name, tensor in saved.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, folded.tensors[name].bfloat16()), name


def test_fold_rejects_bad_input(tiny_policy) -> None:
    with pytest.raises(ValueError, match="non-negative vector"):
        fold_policy(tiny_policy, torch.full((10,), float("nan")))
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        fold_policy(tiny_policy, torch.ones(10), top_k=-1)
    with pytest.raises(ValueError, match="every weight is zero"):
        fold_policy(tiny_policy, torch.zeros(10))


def test_top_k_folds_renormalise_whatever_k(tiny_policy) -> None:
    """top_k >= E keeps every expert, and like any top_k it folds weights that sum to 1."""
    randomize_experts(tiny_policy)
    weights = torch.arange(1.0, 11.0)  # sums to 55

    def first_b(adapter) -> torch.Tensor:
        return next(t for name, t in adapter.tensors.items() if "lora_B" in name)

    all_kept = first_b(fold_policy(tiny_policy, weights, top_k=10))
    torch.testing.assert_close(all_kept, first_b(fold_policy(tiny_policy, weights / 55, top_k=10)))
    torch.testing.assert_close(all_kept, first_b(fold_policy(tiny_policy, weights / 55)))


def test_vllm_rank_pads_to_an_allowed_rank() -> None:
    assert [vllm_rank(r) for r in (1, 2, 16, 24, 80)] == [1, 8, 16, 32, 128]
    with pytest.raises(ValueError, match="top_k"):
        vllm_rank(600)


def test_loading_refuses_mismatched_experts(tiny_policy, tmp_path) -> None:
    tiny_policy.save_pretrained(tmp_path / "policy")
    config_file = tmp_path / "policy/experts/openness_high/adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "r": 4}))
    with pytest.raises(ValueError, match=r"openness_high/adapter_config\.json: r=4"):
        PersonaFusePolicy.from_pretrained(tmp_path / "policy")
    with pytest.raises(FileNotFoundError, match="not a PersonaFuse policy folder"):
        PersonaFusePolicy.from_pretrained(tmp_path)
