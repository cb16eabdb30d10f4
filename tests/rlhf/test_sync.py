from __future__ import annotations

import pytest
import torch

from policies import PersonaConfig, PersonaFusePolicy
from rlhf.sync import (
    DELTA_GROUP,
    AdapterState,
    StaleWeightsError,
    SyncedAdapters,
    delta_snapshot,
    held_snapshot,
    load_snapshot,
    pack_bits,
    quantize_delta,
    snapshot,
    unpack_bits,
)
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


def test_quantize_delta_hand_values() -> None:
    """One group: scale = max|d| / 127 (int8) or / 7 (int4); codes = round(d / scale)."""
    delta = torch.zeros(3, 5)
    delta[0, :3] = torch.tensor([1.0, -0.55, 0.2])
    int8 = quantize_delta(delta, 8)
    assert int8.scales.tolist() == pytest.approx([1 / 127]) and int8.codes.dtype == torch.int8
    assert int8.codes[0, :4].tolist() == [127, -70, 25, 0]  # -69.85 -> -70, 25.4 -> 25
    assert torch.allclose(int8.decode()[0, :3], torch.tensor([1.0, -70 / 127, 25 / 127]))
    assert int8.nbytes == DELTA_GROUP + 4 and int8.decode().shape == (3, 5)
    int4 = quantize_delta(delta, 4)
    assert int4.codes.dtype == torch.uint8 and int4.nbytes == DELTA_GROUP // 2 + 4
    assert torch.allclose(int4.decode()[0, :3], torch.tensor([1.0, -4 / 7, 1 / 7]))  # -3.85 -> -4, 1.4 -> 1
    assert int4.decode()[1:].abs().sum() == 0


def test_int4_packing_round_trips_every_code() -> None:
    codes = torch.arange(-7, 8).float().repeat(20)[:DELTA_GROUP]  # max |code| 7 -> scale 1
    assert torch.equal(quantize_delta(codes, 4).decode(), codes)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_delta_error_bound(bits: int) -> None:
    """|decoded - delta| <= scale / 2 in every group, including a short last group and an all-zero group."""
    delta = torch.randn(2 * DELTA_GROUP + 37) * torch.logspace(-4, -1, 2 * DELTA_GROUP + 37)
    delta[:DELTA_GROUP] = 0
    q = quantize_delta(delta, bits)
    error = (q.decode() - delta).abs()
    scales = torch.cat([torch.zeros(1), q.scales])  # the all-zero first group is not sent
    bound = torch.repeat_interleave(scales / 2, DELTA_GROUP)[: delta.numel()]
    assert (error <= bound * (1 + 1e-5)).all() and error[:DELTA_GROUP].sum() == 0


@pytest.mark.parametrize("bits", [8, 4])
def test_all_zero_groups_are_not_sent(bits: int) -> None:
    """An expert no batch was routed to has an exactly-zero difference: its groups cost one bit each."""
    delta = torch.randn(5, DELTA_GROUP)
    delta[[1, 3]] = 0
    q = quantize_delta(delta, bits)
    assert len(q.codes) == 3 and len(q.scales) == 3 and q.sent.tolist() == [0b10101]
    assert q.nbytes == 3 * DELTA_GROUP * bits // 8 + 3 * 4 + 1
    dense = quantize_delta(delta + torch.where(delta == 0, 1e-30, 0.0), bits).decode()  # every group sent
    assert torch.equal(q.decode(), torch.where(delta == 0, 0.0, dense))
    nothing = quantize_delta(torch.zeros(3, 100), bits)
    assert nothing.codes.numel() == 0 and nothing.nbytes == 1 and torch.equal(nothing.decode(), torch.zeros(3, 100))
    mask = torch.rand(77) > 0.5
    assert torch.equal(unpack_bits(pack_bits(mask), 77), mask)


def test_a_non_finite_delta_is_an_error_naming_the_tensor() -> None:
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj\.lora_B is not finite"):
        quantize_delta(torch.tensor([0.0, float("nan")]), 8, name="layers.0.q_proj.lora_B")


def _adam_like_step(policy: PersonaFusePolicy, gen: torch.Generator, lr: float = 2e-3) -> None:
    """What one optimizer step does to the experts, roughly: every element moves by about lr."""
    with torch.no_grad():
        for layer in policy.mixture_layers.values():
            for t in (layer.lora_A, layer.lora_B):
                t.add_(lr * torch.randn(t.shape, generator=gen).clamp(-3, 3))


@pytest.mark.parametrize("bits", [8, 4])
def test_delta_syncs_track_the_learner_without_drift(tiny_policy, tiny_model_dir, bits: int) -> None:
    """Learner and rollout copies agree bit for bit; after 6 updates the rollout's experts are within half a
    quantisation step of the learner's (error feedback: errors do not add up), and int8 lands closer to the
    learner than a bf16 copy would, in about half of bf16's bytes."""
    randomize_experts(tiny_policy)
    learner, rollout = SyncedAdapters(), SyncedAdapters()
    first = snapshot(tiny_policy, 0, torch.bfloat16)
    learner.apply(first)
    other = PersonaFusePolicy.from_base(PersonaConfig(base_model=str(tiny_model_dir)))
    load_snapshot(other, rollout.apply(first))
    gen = torch.Generator().manual_seed(0)
    for version in range(1, 7):
        _adam_like_step(tiny_policy, gen)
        state = delta_snapshot(tiny_policy, version, learner, bits)
        assert state.base_version == version - 1 and not state.complete
        assert set(state.tensors) == {n for n in snapshot(tiny_policy, 0).tensors if n.startswith("router.")}
        learner.apply(state)
        load_snapshot(other, rollout.apply(state))
    assert rollout.version == learner.version == 6
    for name, tensor in learner.experts.items():
        assert torch.equal(tensor, rollout.experts[name]), name
    for path, layer in tiny_policy.mixture_layers.items():
        for kind in ("lora_A", "lora_B"):
            name, truth = f"{path}.{kind}", getattr(layer, kind).detach()
            error = (getattr(other.mixture_layers[path], kind) - truth).abs().max().item()
            assert error <= state.deltas[name].scales.max().item() / 2 * (1 + 1e-5), name
    experts = [n for n in state.deltas]
    truth = {n: t.detach() for n, t in snapshot(tiny_policy, 6).tensors.items() if n in experts}
    error = {n: (learner.experts[n] - truth[n]).abs().mean() for n in experts}
    bf16_error = {n: (truth[n].bfloat16().float() - truth[n]).abs().mean() for n in experts}
    if bits == 8:
        assert sum(error.values()) < sum(bf16_error.values()) / 4
    delta_bytes = sum(state.deltas[n].nbytes for n in experts)
    bf16_bytes = sum(truth[n].numel() * 2 for n in experts)
    assert delta_bytes <= bf16_bytes * (bits / 16) * (1 + 4 / DELTA_GROUP * 16 / bits) + 8 * DELTA_GROUP


def test_a_delta_for_another_version_is_refused(tiny_policy) -> None:
    """A missed or reordered delta would corrupt the rollout's copy, so it is refused, as is a delta for a tensor
    no earlier sync carried, and load_snapshot refuses unresolved deltas."""
    learner, rollout = SyncedAdapters(), SyncedAdapters()
    learner.apply(snapshot(tiny_policy, 0))
    rollout.apply(snapshot(tiny_policy, 0))
    randomize_experts(tiny_policy)
    second = delta_snapshot(tiny_policy, 1, learner, 8)
    learner.apply(second)
    third = delta_snapshot(tiny_policy, 2, learner, 8)
    with pytest.raises(StaleWeightsError, match="deltas from v1, but this copy holds v0"):
        rollout.apply(third)
    with pytest.raises(ValueError, match="resolve them"):
        load_snapshot(tiny_policy, second)
    with pytest.raises(ValueError, match="no earlier sync carried"):
        SyncedAdapters().apply(AdapterState(1, {}, False, deltas=second.deltas, base_version=None))
    first_copy = {name: t.clone() for name, t in rollout.experts.items()}
    resolved = rollout.resolve(second)  # resolving alone changes nothing: a sync that fails to load can be retried
    assert rollout.version == 0 and all(torch.equal(t, rollout.experts[n]) for n, t in first_copy.items())
    assert torch.equal(rollout.resolve(second).tensors[name := next(iter(second.deltas))], resolved.tensors[name])
    rollout.commit(resolved)
    rollout.apply(third)
    assert rollout.version == 2


def test_held_snapshot_resends_what_the_rollouts_held(tiny_policy) -> None:
    """A resumed run's first sync: the rebuilt expert copy (not the learner's exact weights), the live router."""
    synced = SyncedAdapters()
    synced.apply(snapshot(tiny_policy, 0))
    randomize_experts(tiny_policy)
    synced.apply(delta_snapshot(tiny_policy, 1, synced, 4))
    state = held_snapshot(tiny_policy, synced)
    assert state.complete and state.version == 1 and not state.deltas
    live = snapshot(tiny_policy, 1).tensors
    assert set(state.tensors) == set(live)
    name = next(n for n in live if n.endswith(".lora_B"))
    assert torch.equal(state.tensors[name], synced.experts[name]) and not torch.equal(state.tensors[name], live[name])
    router = next(n for n in live if n.startswith("router."))
    assert torch.equal(state.tensors[router], live[router])
