"""The Ray rollout actor delegates to the worker; errors cross the actor boundary with their message."""

from __future__ import annotations

import pytest
import ray

from rlhf.build import build_policy, route_records
from rlhf.config import load_config
from rlhf.prompts import load_prompts
from rlhf.rollout_actor import RolloutActor
from rlhf.sync import snapshot


def test_rollout_actor_generates_and_refuses_stale_versions(ray_local, tiny_model_dir) -> None:
    cfg = load_config(None, [f"policy.base_model={tiny_model_dir}", "rollout.engine=hf", "rollout.max_new_tokens=4"])
    actor = ray.remote(RolloutActor).options(num_cpus=1).remote(cfg)
    records = load_prompts("builtin")[:1]
    policy = build_policy(cfg)
    weights = route_records(policy, records, cfg.data.max_prompt_tokens).weights
    with pytest.raises(ray.exceptions.RayTaskError, match="no adapter weights yet"):
        ray.get(actor.generate.remote(records, weights, 0, 0, 1))
    assert ray.get(actor.set_weights.remote(snapshot(policy, version=0))) == 0
    batch, seconds = ray.get(actor.generate.remote(records, weights, 0, 0, 1))
    assert batch.response_ids.shape == (4, 4) and len(batch.completions) == 4 and seconds > 0
    with pytest.raises(ray.exceptions.RayTaskError, match="rollout holds v0"):
        ray.get(actor.generate.remote(records, weights, 0, 3, 1))
    ray.kill(actor)
