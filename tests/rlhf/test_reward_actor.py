"""The reward actor (real Ray): it scores as the composer does in-process, keeps and restores the running
normalisation, builds rewards registered only in the driver's process, and takes its own placement bundle when it
reserves resources."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
import ray
import torch

from rewards.base import register_reward
from rewards.compose import RewardComposer, resolve_factories
from rlhf import stages
from rlhf.config import load_config
from rlhf.placement import create_actors, release
from rlhf.reward_actor import RewardActor

PROMPT = "My best friend forgot my birthday and I feel invisible."
BATCHES = [
    ["I'm so sorry, that sounds painful. Would you like to talk about it?", "Just get over it.", "Ok."],
    ["That sounds hard. What happened?", "Whatever, stop overreacting.", "I hear you, that hurts."],
]
RULES = (
    "rewards.components=[{name: validation, weight: 1}, {name: length, weight: 0.5, options: {min_words: 3}}]",
    "rewards.safety=[{name: safety_rules, weight: 2}]",
    "rewards.normalize=true",
)


def driver_only_reward() -> str:
    """Registers, in this process only, a reward defined in a function body (so Ray cannot import it by name)."""
    name = f"words_{uuid.uuid4().hex[:8]}"

    @register_reward(name)
    def words(**_: object):
        return lambda completions, **__: [float(len(c.split())) for c in completions]

    return name


def test_actor_scores_as_the_composer_and_restores_its_statistics(ray_local) -> None:
    cfg = load_config(None, list(RULES))
    actor = ray.remote(RewardActor).options(num_cpus=0).remote(cfg, resolve_factories(cfg.rewards))
    local = RewardComposer(cfg.rewards)
    for completions in BATCHES:
        kwargs = {"prompts": [PROMPT] * 3, "completions": completions, "category": ["friendship"] * 3}
        remote, here = ray.get(actor.score.remote(**kwargs)), local(**kwargs)
        assert torch.equal(remote.rewards, here.rewards)
        assert remote.components.keys() == here.components.keys()
    state = ray.get(actor.state_dict.remote())
    assert state == local.state_dict() and set(state) == {"reward/validation", "reward/length"}

    fresh = ray.remote(RewardActor).options(num_cpus=0).remote(cfg, resolve_factories(cfg.rewards))
    ray.get(fresh.load_state_dict.remote(state))
    kwargs = {"prompts": [PROMPT] * 3, "completions": BATCHES[0]}
    assert torch.equal(ray.get(fresh.score.remote(**kwargs)).rewards, local(**kwargs).rewards)
    with pytest.raises(ray.exceptions.RayTaskError, match="missing"):
        ray.get(fresh.load_state_dict.remote({}))


def test_reward_bundle_and_a_reward_registered_only_in_the_driver(ray_local, tiny_model_dir) -> None:
    name = driver_only_reward()
    cfg = load_config(None, [
        f"policy.base_model={tiny_model_dir}", "rollout.engine=hf", "learner.cpus_per_learner=1",
        "rollout.cpus_per_actor=1", "placement.reward_cpus=1", f"rewards.components=[{{name: {name}, weight: 2}}]",
        "rewards.safety=[]",
    ])  # fmt: skip
    actors = create_actors(cfg)
    try:
        bundles = ray.util.placement_group_table(actors.group)["bundles"]
        assert len(bundles) == 3 and bundles[2] == {"CPU": 1.0}  # learner, rollout, then the reward actor's
        batch = SimpleNamespace(prompts=[PROMPT] * 2, completions=["one two three", "one"], categories=[None] * 2)
        scored = stages.rewards(actors, batch)
        assert scored.rewards.tolist() == [6.0, 2.0] and batch.rewards is scored.rewards
        assert scored.components[f"reward/{name}"].tolist() == [3.0, 1.0]
    finally:
        release(actors)
    deadline = time.monotonic() + 60
    with pytest.raises(ray.exceptions.RayActorError):  # released means killed, within the minute
        while time.monotonic() < deadline:  # ray.kill is asynchronous: a call just after it may still be served
            ray.get(actors.reward.node_id.remote(), timeout=60)
            time.sleep(0.5)


def test_a_missing_reward_model_fails_before_the_learners_start(ray_local, tiny_model_dir, tmp_path) -> None:
    missing = tmp_path / "no_such_reward_model"
    cfg = load_config(None, [
        f"policy.base_model={tiny_model_dir}", "learner.cpus_per_learner=1", "rollout.cpus_per_actor=1",
        f"rewards.components=[{{name: reward_model, weight: 1, options: {{path: {missing}}}}}]",
    ])  # fmt: skip
    before = set(ray.util.placement_group_table())
    with pytest.raises(ray.exceptions.RayActorError, match="no HF model folder"):
        create_actors(cfg)
    groups = ray.util.placement_group_table()
    assert all(groups[g]["state"] == "REMOVED" for g in set(groups) - before)  # nothing stays reserved
