"""The RL driver: one loop, readable top to bottom. The driver moves data; the actors compute.

prompts -> route + sample (rollout actors) -> rewards (+ safety) -> old/ref log-probs (learners)
-> advantages (driver) -> update (learners) -> sync adapters to rollouts -> log -> checkpoint
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ray

from policies.atomic_io import atomic_dir, atomic_write_text
from rewards.compose import RewardComposer
from rlhf import stages
from rlhf.config import JobConfig
from rlhf.placement import ActorGroups, create_actors, release, start_ray
from rlhf.prompts import PromptStream, load_prompts
from rlhf.tracking import Tracker


def prepare_run_dir(cfg: JobConfig) -> Path:
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another run.name or delete it")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", cfg.model_dump_json(indent=2))
    return run_dir


def save_checkpoint(actors: ActorGroups, run_dir: Path, step: int, state: dict) -> Path:
    """checkpoints/step_N/: the policy (PEFT experts + router) and the driver's state, written atomically."""
    target = run_dir / "checkpoints" / f"step_{step}"
    with atomic_dir(target) as tmp:
        ray.get(actors.learners[0].save_policy.remote(str(tmp / "policy")))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return target


def fit(cfg: JobConfig) -> Path:
    """Runs cfg.run.steps RL steps and returns the run folder; actors are released even when a step fails."""
    run_dir = prepare_run_dir(cfg)
    records = load_prompts(cfg.data.path, system_prompt=cfg.data.system_prompt)
    stream = PromptStream(records, cfg.data.prompts_per_step, seed=cfg.run.seed)
    composer = RewardComposer(cfg.rewards)
    start_ray(cfg)
    actors = create_actors(cfg)
    try:
        train(cfg, actors, stream, composer, run_dir)
    finally:
        release(actors)
    return run_dir


def train(cfg: JobConfig, actors: ActorGroups, stream: PromptStream, composer: RewardComposer, run_dir: Path) -> None:
    """The RL loop, one stage per block."""
    experts = cfg.policy.experts
    tracker = Tracker(run_dir, cfg.run.steps, experts)
    version = 0
    for step in range(1, cfg.run.steps + 1):
        timings: dict[str, float] = {}
        step_start = time.perf_counter()

        # 1. route + sample G replies per prompt with the current persona mixture
        with stages.timed(timings, "gen"):
            batch = stages.generate(actors, stream.next_batch(), version, seed=cfg.run.seed * 100_003 + step)

        # 2. social-emotional rewards minus safety penalties, every component kept for the log
        with stages.timed(timings, "reward"):
            scored = composer(batch.prompts, batch.completions, category=batch.categories)
            batch.rewards = scored.rewards

        # 3. pi_old (current router + experts) and pi_ref (adapters off) on the learners
        with stages.timed(timings, "ref"):
            batch.old_logprobs, batch.ref_logprobs = stages.reference_logprobs(actors, batch)

        # 4. advantages (cheap; on the driver)
        with stages.timed(timings, "adv"):
            stages.compute_advantages(batch, cfg.algorithm)

        # 5. update router + experts on the DeepSpeed learners
        with stages.timed(timings, "update"):
            learner_metrics = stages.update(actors, batch, cfg)

        # 6. push the new adapters (not the base) to the rollout actors
        with stages.timed(timings, "sync"):
            version, sync_bytes = stages.sync_weights(actors)

        # 7. log, checkpoint
        metrics = {
            **stages.rollout_metrics(batch, experts, timings["timing/gen"]),
            **{key: value.mean().item() for key, value in scored.components.items()},
            **learner_metrics,
            "sync/bytes": float(sync_bytes),
            "sync/seconds": timings["timing/sync"],
            **timings,
            "time/step_s": time.perf_counter() - step_start,
        }
        tracker.log(step, metrics)
        if step % cfg.run.save_every == 0 or step == cfg.run.steps:
            state = {"step": step, "version": version, "data": stream.state_dict(), "rewards": composer.state_dict()}
            save_checkpoint(actors, run_dir, step, state)
    ray.get(actors.learners[0].save_policy.remote(str(run_dir / "policy")))
    tracker.close()
