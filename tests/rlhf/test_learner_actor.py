"""Real DeepSpeed learners in real Ray actors: 1 rank and 2 ranks give the same loss and the same new adapters."""

from __future__ import annotations

import math

import pytest
import ray
import torch

from rlhf import stages
from rlhf.build import build_policy, route_records
from rlhf.config import load_config
from rlhf.placement import create_actors, release
from rlhf.prompts import load_prompts
from rlhf.rollout import RolloutWorker
from rlhf.sync import SyncedAdapters, snapshot
from tests.conftest import randomize_experts


def tiny_overrides(model_dir, *extra: str) -> list[str]:
    """The tiny model with HF sampling: 2 prompts x 4 samples x 6 tokens, one CPU per actor, plus ``extra``."""
    return [
        f"policy.base_model={model_dir}", "rollout.engine=hf", "rollout.max_new_tokens=6", "data.prompts_per_step=2",
        "learner.cpus_per_learner=1", "rollout.cpus_per_actor=1", *extra,
    ]  # fmt: skip


def sample_batch(overrides: list[str]):
    """A fixed 2-prompt x 4-sample batch from an HF rollout with randomised experts, with made-up rewards."""
    cfg = load_config(None, overrides)
    worker = RolloutWorker(cfg)
    randomize_experts(worker.policy, std=0.2)
    worker.set_weights(snapshot(worker.policy, version=0))
    records = load_prompts("builtin")[:2]
    routed = route_records(worker.policy, records, cfg.data.max_prompt_tokens)
    batch = worker.generate(records, routed.weights, 0, 0, seed=0)
    batch.situation_features = routed.features[batch.group_ids]  # as stages.Generation.wait attaches them
    batch.rewards = torch.tensor([1.0, 0.2, -0.5, 0.3, 0.0, 1.0, 0.5, -1.0])
    return batch


def one_step(cfg, batch):
    """Score, advantages and one update on fresh learner actors; returns (metrics, scored batch, new adapters)."""
    actors = create_actors(cfg)
    b = batch.select(slice(None))
    stages.score(actors, b)
    stages.compute_advantages(b, cfg.algorithm)
    metrics = stages.update(actors, b, cfg)
    state = ray.get(actors.learners[0].adapter_state.remote())
    release(actors)
    return metrics, b, state


def first_lora_b(state) -> str:
    return next(name for name in state.tensors if name.endswith(".lora_B"))


def test_one_and_two_learners_agree(ray_local, tiny_model_dir) -> None:
    overrides = tiny_overrides(
        tiny_model_dir,
        "learner.micro_batch_size=2",
        "learner.lr=0.05",
        "algorithm.ppo_epochs=2",
        "algorithm.kl.coef=0.1",
        "algorithm.entropy_coef=0.01",  # the entropy's gradient path through logprobs_and_entropy too
    )
    batch = sample_batch(overrides)
    (m1, _, s1), (m2, _, s2) = (
        one_step(load_config(None, [*overrides, f"learner.num_learners={n}"]), batch) for n in (1, 2)
    )
    assert abs(m1["loss"] - m2["loss"]) < 1e-5 and m1["loss"] != 0.0
    # the global gradient norm before clipping: ZeRO-2's partitions on 2 ranks, and ZeRO-0's whole gradients
    m0, _, _ = one_step(load_config(None, [*overrides, "learner.zero_stage=0"]), batch)
    assert m1["grad_norm"] > 0
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert m0["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    router1, router2 = s1.tensors["router.mlp.2.weight"], s2.tensors["router.mlp.2.weight"]
    torch.testing.assert_close(router2, router1, atol=1e-5, rtol=1e-4)
    b = first_lora_b(s1)
    torch.testing.assert_close(s2.tensors[b], s1.tensors[b], atol=1e-5, rtol=1e-4)
    assert s1.version == 1 and s1.tensors[b].abs().sum() > 0  # the update moved the experts


def test_shared_prompt_forward_gives_the_same_update(ray_local, tiny_model_dir) -> None:
    """learner.shared_prompt_forward on and off (2 prompts x 4 samples, micro-batches of 4, two epochs so pi_old is
    scored too): the same reference log-probs, loss and new adapters under DeepSpeed."""
    overrides = tiny_overrides(
        tiny_model_dir, "learner.micro_batch_size=4", "learner.lr=0.05", "algorithm.ppo_epochs=2",
        "algorithm.kl.coef=0.1",
    )  # fmt: skip
    batch = sample_batch(overrides)
    flags = ("true", "false")
    runs = [one_step(load_config(None, [*overrides, f"learner.shared_prompt_forward={f}"]), batch) for f in flags]
    (m_on, b_on, s_on), (m_off, b_off, s_off) = runs
    mask = b_on.response_mask.bool()
    torch.testing.assert_close(b_on.ref_logprobs[mask], b_off.ref_logprobs[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b_on.old_logprobs[mask], b_off.old_logprobs[mask], atol=1e-5, rtol=1e-4)
    assert abs(m_on["loss"] - m_off["loss"]) < 1e-5 and m_on["loss"] != 0.0
    b = first_lora_b(s_on)
    torch.testing.assert_close(s_on.tensors[b], s_off.tensors[b], atol=1e-5, rtol=1e-4)


def test_bf16_mixed_learner_tracks_fp32(ray_local, tiny_model_dir) -> None:
    """learner.dtype=bf16-mixed (bf16 autocast, fp32 weights): same loss and reference log-probs as fp32 within
    bf16 rounding, and it trains."""
    overrides = tiny_overrides(tiny_model_dir, "learner.micro_batch_size=4", "learner.lr=0.05", "algorithm.kl.coef=0.1")
    batch = sample_batch(overrides)
    (m32, b32, _), (m16, b16, s16) = (
        one_step(load_config(None, [*overrides, f"learner.dtype={d}"]), batch) for d in ("fp32", "bf16-mixed")
    )
    ref32, ref16 = b32.ref_logprobs, b16.ref_logprobs
    assert not torch.equal(ref16, ref32)  # autocast really ran in bf16
    torch.testing.assert_close(ref16, ref32, atol=0.05, rtol=0)
    assert abs(m16["loss"] - m32["loss"]) < 0.05 * abs(m32["loss"]) + 1e-3 and abs(m16["kl"] - m32["kl"]) < 1e-2
    b = s16.tensors[first_lora_b(s16)]
    assert b.dtype == torch.float32 and b.abs().sum() > 0  # fp32 weights moved


def test_router_anchor_holds_the_router_near_its_start(ray_local, tiny_model_dir) -> None:
    """algorithm.router_anchor_coef: KL to the router the run started from is 0 on the first optimizer step and
    positive after; with a strong anchor the routing of the batch's prompts ends closer to where it started."""
    from rlhf.router_losses import router_anchor_kl

    overrides = tiny_overrides(
        tiny_model_dir, "learner.micro_batch_size=8", "learner.router_lr=0.02", "algorithm.ppo_epochs=4"
    )
    batch = sample_batch(overrides)
    policy = build_policy(load_config(None, overrides))
    features = policy.situation_features(batch.prompt_ids, batch.prompt_mask)
    start = policy.router(features).probs.detach()

    def moved(state) -> float:
        policy.router.load_state_dict({k[len("router.") :]: v for k, v in state.tensors.items() if k[:7] == "router."})
        return router_anchor_kl(policy.router(features).probs, start).item()

    (free, _, s_free), (held, _, s_held) = (
        one_step(load_config(None, [*overrides, f"algorithm.router_anchor_coef={c}"]), batch) for c in (0, 50)
    )
    assert "router/anchor_kl" not in free and held["router/anchor_kl"] > 0  # mean of 0 (step 1) and positives
    drift = {"free": moved(s_free), "held": moved(s_held)}
    assert drift["held"] < 0.5 * drift["free"], drift


def test_pole_anchor_keeps_the_poles_apart(ray_local, tiny_model_dir, tmp_path) -> None:
    """algorithm.pole_anchor: reported once per optimizer step, log 2 on the first (fresh experts equal the base),
    and with a strong anchor the experts end the update with the poles further apart than without it."""
    from rlhf.pole_anchor import PoleAnchor, load_persona_data
    from rlhf.sync import load_snapshot
    from tests.rlhf.test_pole_anchor import write_persona_data

    write_persona_data(tmp_path / "data")
    data = load_persona_data(tmp_path / "data")
    overrides = tiny_overrides(
        tiny_model_dir, "learner.micro_batch_size=4", "learner.lr=0.02", "algorithm.ppo_epochs=3",
        f"algorithm.pole_anchor.data_dir={tmp_path / 'data'}", "algorithm.pole_anchor.pairs_per_step=6",
    )  # fmt: skip
    batch = sample_batch(overrides)
    runs = {}
    for coef in (0, 5):
        cfg = load_config(None, [*overrides, f"algorithm.pole_anchor.coef={coef}"])
        actors = create_actors(cfg)
        if coef:
            stages.set_pole_anchor(actors, data)
        b = batch.select(slice(None))
        stages.score(actors, b)
        stages.compute_advantages(b, cfg.algorithm)
        runs[coef] = (stages.update(actors, b, cfg), ray.get(actors.learners[0].adapter_state.remote()))
        release(actors)
    assert "pole_anchor/loss" not in runs[0][0]
    assert 0 < runs[5][0]["pole_anchor/loss"] < math.log(2)  # mean of log 2 (step 1) and two lower steps

    policy = build_policy(load_config(None, overrides))
    anchor = PoleAnchor(policy, data, load_config(None, overrides).algorithm.pole_anchor, seed=0)
    after = {}
    for coef, (_, state) in runs.items():
        load_snapshot(policy, state)
        with torch.no_grad():
            after[coef] = sum(anchor.loss(i).item() for i in range(5))
    assert after[5] < after[0] - 0.5, after


def test_lora_fa_trains_b_only_and_syncs_b_only(ray_local, tiny_model_dir) -> None:
    """policy.train_lora_a=false: an update moves B but not A, and after the first (complete) sync each sync
    carries exactly the A bytes less (B and the router)."""
    overrides = tiny_overrides(
        tiny_model_dir, "learner.micro_batch_size=8", "learner.lr=0.05", "policy.train_lora_a=false"
    )
    batch = sample_batch(overrides)
    cfg = load_config(None, overrides)
    actors = create_actors(cfg)
    records = load_prompts("builtin")[:3]
    routed = stages.route(actors, records)  # the learners route for the rollouts: the same router as a local build
    local = route_records(build_policy(cfg), records, cfg.data.max_prompt_tokens)
    torch.testing.assert_close(routed.weights, local.weights)
    torch.testing.assert_close(routed.features, local.features)
    start = ray.get(actors.learners[0].adapter_state.remote())
    _, complete_bytes = stages.sync_weights(actors)
    b = batch.select(slice(None))
    stages.score(actors, b)
    stages.compute_advantages(b, cfg.algorithm)
    stages.update(actors, b, cfg)
    version, partial_bytes = stages.sync_weights(actors)
    end = ray.get(actors.learners[0].adapter_state.remote())
    release(actors)
    a_names = [name for name in start.tensors if name.endswith(".lora_A")]
    assert version == 1 and all(torch.equal(start.tensors[n], end.tensors[n]) for n in a_names)
    assert end.tensors[first_lora_b(end)].abs().sum() > 0  # B started at zero and moved
    assert partial_bytes == complete_bytes - sum(start.tensors[n].nbytes for n in a_names)


def test_int8_delta_sync_through_learner_and_rollout_actors(ray_local, tiny_model_dir) -> None:
    """rollout.sync_delta=int8: the first sync is complete, the next carries the trained experts as int8
    differences (about a quarter of their fp32 bytes) that a rollout actor takes in, and the copy they rebuild is
    within half a quantisation step of the learner's updated weights."""
    overrides = tiny_overrides(
        tiny_model_dir, "learner.micro_batch_size=8", "learner.lr=0.05", "rollout.sync_delta=int8"
    )
    batch = sample_batch(overrides)
    cfg = load_config(None, overrides)
    actors = create_actors(cfg)
    states = []
    for update in (False, True):
        if update:
            b = batch.select(slice(None))
            stages.score(actors, b)
            stages.compute_advantages(b, cfg.algorithm)
            stages.update(actors, b, cfg)
        state_ref, _ = actors.learners[0].publish_adapters.remote()
        ray.get([actor.set_weights.remote(state_ref) for actor in actors.rollouts])  # the rollout decodes it
        states.append(ray.get(state_ref))
    end = ray.get(actors.learners[0].adapter_state.remote())
    release(actors)
    first, second = states
    assert first.complete and not first.deltas and second.base_version == 0 and second.version == 1
    experts = [name for name in first.tensors if ".lora_" in name]
    assert sorted(second.deltas) == sorted(experts) and all(".lora_" not in name for name in second.tensors)
    expert_bytes = sum(first.tensors[n].nbytes for n in experts)
    assert sum(second.deltas[n].nbytes for n in experts) < expert_bytes * 0.3
    copy = SyncedAdapters()
    copy.apply(first)
    copy.apply(second)
    name = first_lora_b(end)
    assert end.tensors[name].abs().sum() > 0  # B moved
    error = (copy.experts[name] - end.tensors[name]).abs().max().item()
    assert error <= second.deltas[name].scales.max().item() / 2 * (1 + 1e-5)


def test_optimizer_offload_matches_no_offload(ray_local, tiny_model_dir) -> None:
    """learner.offload_optimizer (ZeRO-2 keeps AdamW's states and step on the CPU): the same update as without."""
    overrides = tiny_overrides(tiny_model_dir, "learner.micro_batch_size=8", "learner.lr=0.05")
    batch = sample_batch(overrides)
    (m0, _, s0), (m1, _, s1) = (
        one_step(load_config(None, [*overrides, f"learner.offload_optimizer={flag}"]), batch) for flag in (False, True)
    )
    assert abs(m0["loss"] - m1["loss"]) < 1e-6
    b = first_lora_b(s0)
    assert s1.tensors[b].abs().sum() > 0
    torch.testing.assert_close(s1.tensors[b], s0.tensors[b], atol=1e-5, rtol=1e-4)


def test_learner_replays_the_rollouts_expert_selection(ray_local, tiny_model_dir) -> None:
    """Updates use the experts the sample was drawn with, not the learner's own top-k: with the batch's routing
    moved to other experts, every row is reported replayed, and exactly the experts the batch names are trained
    (fresh experts have B = 0, so an expert outside the mixture gets no gradient)."""
    overrides = tiny_overrides(tiny_model_dir, "learner.micro_batch_size=8", "algorithm.kl.coef=0.1")
    batch = sample_batch(overrides)
    moved = batch.select(slice(None))
    moved.routing_weights = batch.routing_weights.roll(3, dims=-1)  # top-2 of other experts, same weights
    (own, _, s_own), (replayed, _, s_moved) = (one_step(load_config(None, overrides), b) for b in (batch, moved))
    assert own["router/replayed_selection"] == 0.0 and replayed["router/replayed_selection"] == 1.0

    def trained(state) -> set[int]:
        b = state.tensors[first_lora_b(state)]  # (E, d_out, r)
        return set((b.abs().sum((1, 2)) > 0).nonzero().flatten().tolist())

    for state, routing in ((s_own, batch.routing_weights), (s_moved, moved.routing_weights)):
        assert trained(state) == set((routing > 0).any(0).nonzero().flatten().tolist())


def test_rollout_correction_weights_the_policy_loss(ray_local, tiny_model_dir) -> None:
    """The learner weights each token's policy loss by pi_old / pi_rollout: an engine that rated every sampled token
    far below the learner (rho >> 2) doubles the loss under truncation at 2. Without correction the engine's
    log-probs do not enter the loss (masking is checked on hand values in test_rollout_correction.py)."""
    overrides = tiny_overrides(tiny_model_dir, "algorithm.kl.coef=0.0")
    batch = sample_batch(overrides)
    underrated = batch.select(slice(None))
    underrated.rollout_logprobs = batch.rollout_logprobs - 50.0 * batch.response_mask

    def run(batch, *correction: str):
        return one_step(load_config(None, [*overrides, *correction]), batch)

    off, _, _ = run(underrated, "algorithm.rollout_correction.level=none")
    truncated, _, _ = run(underrated)  # the default: token level, truncate at 2

    assert off["rollout_is/mismatch_kl"] > 40  # logged without correction too
    assert truncated["rollout_is/bounded_frac"] == 1.0 and truncated["rollout_is/weight_mean"] == pytest.approx(2.0)
    assert truncated["loss"] == pytest.approx(2 * off["loss"], rel=1e-5)


def test_update_uses_the_drivers_kl_coefficient(ray_local, tiny_model_dir) -> None:
    """The driver's beta (the adaptive controller's, algorithm.kl.target) reaches the learner's loss: after one
    update has moved the experts off the base, an update with beta = 1e5 has a loss of ~1e5 * KL (one micro-batch,
    so the loss's token mean and the logged KL cover the same tokens)."""
    overrides = tiny_overrides(tiny_model_dir, "algorithm.kl.coef=0.0", "learner.micro_batch_size=8")
    cfg = load_config(None, overrides)
    batch = sample_batch(overrides)
    actors = create_actors(cfg)
    try:
        results = []
        for kl_coef in (None, 1e5):  # the config's 0, then the driver's
            b = batch.select(slice(None))
            stages.score(actors, b)
            stages.compute_advantages(b, cfg.algorithm, kl_coef)
            results.append(stages.update(actors, b, cfg, kl_coef))
    finally:
        release(actors)
    first, second = results
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and second["kl"] > 1e-6
    assert second["loss"] == pytest.approx(1e5 * second["kl"], rel=0.02)


def test_mask_truncated_leaves_the_cut_off_replies_out_of_the_loss(ray_local, tiny_model_dir) -> None:
    """algorithm.overlong.mask_truncated trains exactly as if the cut-off replies had no tokens (the same loss and
    the same new adapters), and differently from training on them. The first micro-batch of 4 is all cut off: its
    no tokens must not pull the logged token means (entropy) toward 0, so they equal one micro-batch's over the
    other 3 replies."""
    overrides = tiny_overrides(tiny_model_dir, "learner.micro_batch_size=4")
    batch = sample_batch(overrides)
    batch.truncated = torch.tensor([True, True, True, True, False, True, False, False])
    without = batch.select(slice(None))
    without.response_mask = without.response_mask * (~batch.truncated).long()[:, None]
    masked, _, masked_state = one_step(load_config(None, [*overrides, "algorithm.overlong.mask_truncated=true"]), batch)
    dropped, _, dropped_state = one_step(load_config(None, [*overrides, "learner.micro_batch_size=8"]), without)
    trained, _, trained_state = one_step(load_config(None, overrides), batch)
    assert masked["loss"] == pytest.approx(dropped["loss"], rel=1e-5) and masked["loss"] != trained["loss"]
    assert masked["entropy"] == pytest.approx(dropped["entropy"], rel=1e-5)
    b = first_lora_b(masked_state)
    torch.testing.assert_close(masked_state.tensors[b], dropped_state.tensors[b], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(masked_state.tensors[b], trained_state.tensors[b], atol=1e-6)
