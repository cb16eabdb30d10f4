from __future__ import annotations

import torch

from policies import PersonaConfig, PersonaFusePolicy
from rlhf.sync import load_snapshot, snapshot
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
    assert next(iter(state.experts.values()))[1].abs().sum() == 0


def test_bf16_snapshot_halves_the_bytes_and_loads_into_fp32(tiny_policy) -> None:
    from tests.conftest import randomize_experts

    randomize_experts(tiny_policy)
    full, half = snapshot(tiny_policy, 1), snapshot(tiny_policy, 1, torch.bfloat16)
    expert_bytes = sum(t.numel() * 4 for pair in full.experts.values() for t in pair)
    assert full.nbytes - half.nbytes == expert_bytes // 2  # experts travel in bf16; the small router stays fp32
    path, (a, _) = next(iter(half.experts.items()))
    assert a.dtype == torch.bfloat16
    load_snapshot(tiny_policy, half)
    layer = tiny_policy.mixture_layers[path]
    assert layer.lora_A.dtype == torch.float32 and torch.equal(layer.lora_A, a.float())
