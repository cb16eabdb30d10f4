"""Ray start-up and actor placement: one placement group, PACKed when colocated, SPREAD across nodes otherwise."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from rewards.compose import resolve_factories
from rlhf.config import JobConfig
from rlhf.learner_actor import LearnerActor
from rlhf.reward_actor import RewardActor
from rlhf.rollout_actor import RolloutActor

PLACEMENT_TIMEOUT_S = 300


@dataclass
class ActorGroups:
    learners: list[Any]  # Ray handles of LearnerActor, rank order
    rollouts: list[Any]  # Ray handles of RolloutActor
    reward: Any  # Ray handle of the RewardActor (None only while create_actors starts it)
    group: PlacementGroup


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}


def start_ray(cfg: JobConfig) -> None:
    """Joins the configured cluster, RAY_ADDRESS (`ray job submit` sets it), or one running here; else starts one."""
    if ray.is_initialized():
        return
    address = cfg.placement.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    running = local_cluster_address()
    if running:
        ray.init(address=running)  # a cluster started with `ray start` on this machine
        return
    lc, rc = cfg.learner, cfg.rollout
    needed = lc.num_learners * lc.cpus_per_learner + rc.num_actors * rc.cpus_per_actor + cfg.placement.reward_cpus
    ray.init(address="local", num_cpus=max(math.ceil(needed), os.cpu_count() or 1), include_dashboard=False)


def local_cluster_address() -> str | None:
    """The address `ray start` recorded on this machine, if its head still accepts connections. A head that was
    killed or terminated leaves the record behind, and ray.init("auto") then waits on the dead address for minutes."""
    record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        address = record.read_text().strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2):
            return address
    except (OSError, ValueError):
        return None


def create_actors(cfg: JobConfig) -> ActorGroups:
    """Places N learners, M rollout actors and the reward actor, then joins the learners' process group. The reward
    actor gets a bundle of its own when it reserves anything; otherwise it runs on the driver's node, as the rewards
    did in the driver, holding no GPU."""
    lc, rc, pc = cfg.learner, cfg.rollout, cfg.placement
    bundles = [_bundle(lc.cpus_per_learner, lc.gpus_per_learner)] * lc.num_learners
    bundles += [_bundle(rc.cpus_per_actor, rc.gpus_per_actor)] * rc.num_actors
    reward_bundle = pc.reward_cpus + pc.reward_gpus > 0
    bundles += [_bundle(pc.reward_cpus, pc.reward_gpus)] if reward_bundle else []
    group = placement_group(bundles, strategy="PACK" if cfg.placement.colocate else "SPREAD")
    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        ray.util.remove_placement_group(group)
        raise RuntimeError(
            f"Ray could not place {bundles} within {PLACEMENT_TIMEOUT_S}s (cluster has {ray.cluster_resources()}); "
            "lower learner.cpus_per_learner / gpus_per_learner, rollout.cpus_per_actor / gpus_per_actor, "
            "placement.reward_cpus / reward_gpus, the learner and rollout counts, or add nodes"
        )

    cluster_has_gpus = ray.cluster_resources().get("GPU", 0) > 0

    def place(cls: type, index: int | None, cpus: float, gpus: float, *args: Any) -> Any:
        strategy = (  # index None: no bundle, the driver's node
            NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
            if index is None
            else PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
        )
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "scheduling_strategy": strategy}
        if gpus == 0 and cluster_has_gpus:  # Ray no longer hides the GPUs from an actor given none: hide them, or
            options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}  # it would pick cuda:0 unasked
        return ray.remote(cls).options(**options).remote(*args)

    # The reward actor starts first: a bad reward config (a missing model folder) fails before any policy loads. Its
    # factories travel resolved, so rewards registered in the driver's process (a script's own) build there too.
    reward_index = len(bundles) - 1 if reward_bundle else None
    actors = ActorGroups([], [], None, group)
    try:
        factories = resolve_factories(cfg.rewards)
        actors.reward = place(RewardActor, reward_index, pc.reward_cpus, pc.reward_gpus, cfg, factories)
        ray.get(actors.reward.node_id.remote())
        actors.learners = [
            place(LearnerActor, i, lc.cpus_per_learner, lc.gpus_per_learner, cfg, i, lc.num_learners)
            for i in range(lc.num_learners)
        ]
        actors.rollouts = [
            place(RolloutActor, lc.num_learners + j, rc.cpus_per_actor, rc.gpus_per_actor, cfg)
            for j in range(rc.num_actors)
        ]
        master_addr, master_port = ray.get(actors.learners[0].master_address.remote())
        ray.get([learner.setup.remote(master_addr, master_port) for learner in actors.learners])
        ray.get([rollout.node_id.remote() for rollout in actors.rollouts])  # a rollout that failed to start raises
    except BaseException:
        release(actors)  # a long-lived driver must not keep a failed job's resources reserved
        raise
    return actors


def release(actors: ActorGroups) -> None:
    """Kills the actors and frees their placement group, so the cluster can host the next job. The rollout actors
    first delete their adapter files: a killed actor runs no cleanup (a busy or hung one is waited on for at most
    60 s, a dead one not at all)."""
    ray.wait([rollout.close.remote() for rollout in actors.rollouts], num_returns=len(actors.rollouts), timeout=60)
    for actor in (*actors.learners, *actors.rollouts, *([actors.reward] if actors.reward is not None else [])):
        ray.kill(actor)
    ray.util.remove_placement_group(actors.group)
