from __future__ import annotations

import pytest
import torch

from policies import PersonaConfig, PersonaFusePolicy
from rlhf.sync import AdapterState, load_snapshot, snapshot
from tests.conftest import randomize_experts


def test_snapshot_round_trip_and_size(tiny_policy, tiny_model_dir) -> None:
    randomize_experts(tiny_policy)
    state = snapshot(tiny_policy, version=3)
    other = PersonaFusePolicy.from_base(PersonaConfig(base_model=str(tiny_model_dir)))
    load_snapshot(other, state)
    for (n, p), q in zip(tiny_policy.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q), n
    trainable = sum(p.numel() * 4 for n, p in tiny_policy.named_parameters() if "lora_" in n)
    router = sum(t.numel() * 4 for t in tiny_policy.router.state_dict().values())
    assert state.version == 3 and state.nbytes == trainable + router
    base = sum(p.numel() * 4 for n, p in tiny_policy.model.named_parameters() if "lora_" not in n)
    assert state.nbytes < base  # only adapters travel


def test_snapshot_is_a_copy(tiny_policy) -> None:
    state = snapshot(tiny_policy, 0)
    randomize_experts(tiny_policy, seed=5)
    assert next(t for name, t in state.tensors.items() if name.endswith(".lora_B")).abs().sum() == 0


def test_bf16_snapshot_halves_the_bytes_and_loads_into_fp32(tiny_policy) -> None:
    from tests.conftest import randomize_experts

    randomize_experts(tiny_policy)
    full, half = snapshot(tiny_policy, 1), snapshot(tiny_policy, 1, torch.bfloat16)
    expert_bytes = sum(t.numel() * 4 for name, t in full.tensors.items() if ".lora_" in name)
    assert full.nbytes - half.nbytes == expert_bytes // 2  # experts travel in bf16; the small router stays fp32
    path = next(iter(tiny_policy.mixture_layers))
    a = half.tensors[f"{path}.lora_A"]
    assert a.dtype == torch.bfloat16
    load_snapshot(tiny_policy, half)
    layer = tiny_policy.mixture_layers[path]
    assert layer.lora_A.dtype == torch.float32 and torch.equal(layer.lora_A, a.float())


def test_trained_only_snapshot_carries_b_and_router_under_lora_fa(tiny_policy, tiny_model_dir) -> None:
    """policy.train_lora_a=false (LoRA-FA): after the complete first sync only B and the router travel, and
    loading that partial snapshot updates them while A keeps what the complete one set."""
    randomize_experts(tiny_policy)
    tiny_policy.set_trainable(lora_a=False)
    complete = snapshot(tiny_policy, 1)
    randomize_experts(tiny_policy, seed=7)  # stands in for an update: moves A too, which LoRA-FA would not
    partial = snapshot(tiny_policy, 2, trained_only=True)
    assert not partial.complete and not any(name.endswith(".lora_A") for name in partial.tensors)
    a_bytes = sum(t.numel() * 4 for name, t in complete.tensors.items() if name.endswith(".lora_A"))
    assert partial.nbytes == complete.nbytes - a_bytes

    other = PersonaFusePolicy.from_base(PersonaConfig(base_model=str(tiny_model_dir)))
    load_snapshot(other, complete)
    load_snapshot(other, partial)
    path, layer = next(iter(tiny_policy.mixture_layers.items()))
    assert torch.equal(other.mixture_layers[path].lora_B, layer.lora_B)
    assert torch.equal(other.mixture_layers[path].lora_A, complete.tensors[f"{path}.lora_A"])


def test_a_snapshot_that_does_not_fit_is_refused(tiny_policy) -> None:
    state = snapshot(tiny_policy, 1)
    name = next(iter(state.tensors))
    missing = AdapterState(1, {k: v for k, v in state.tensors.items() if k != name}, complete=True)
    with pytest.raises(ValueError, match="missing"):
        load_snapshot(tiny_policy, missing)
    load_snapshot(tiny_policy, AdapterState(1, missing.tensors, complete=False))  # a partial one may omit it
    with pytest.raises(ValueError, match="unknown"):
        load_snapshot(tiny_policy, AdapterState(1, {**state.tensors, "router.extra": torch.zeros(1)}, complete=True))
    with pytest.raises(ValueError, match="shape"):
        load_snapshot(tiny_policy, AdapterState(1, {name: state.tensors[name][:1]}, complete=False))
