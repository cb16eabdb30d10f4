"""The RL driver: one loop, readable top to bottom. The driver moves data; the actors compute.

prompts -> route (learners) -> sample (rollout actors) -> rewards + safety (reward actor) -> old/ref log-probs
(learners) -> advantages (driver) -> update (learners) -> sync adapters to rollouts -> log -> checkpoint

With rollout.one_step_off_policy the next step's prompts are routed and sampled right after this step's replies
arrive, so sampling runs while the learners score and update; those replies then come from weights one update old.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import ray
from safetensors.torch import load_file, save_file

from policies.atomic_io import atomic_dir, atomic_write_text
from rewards.compose import preflight
from rlhf import learner_state, stages
from rlhf.batch import RolloutBatch
from rlhf.build import check_prompts_fit
from rlhf.config import JobConfig
from rlhf.kl import adaptive_kl_coef
from rlhf.placement import ActorGroups, create_actors, release, start_ray
from rlhf.pole_anchor import load_persona_data
from rlhf.prompts import PromptRecord, PromptStream, load_eval_prompts, load_prompts
from rlhf.tracking import Tracker
from rlhf.transfer import read_folder, write_folder

CHECKPOINTS = "checkpoints"
PENDING = "next_rollouts"  # a checkpoint's already-sampled next batch (rollout.one_step_off_policy)


def checkpoint_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of a run's checkpoints, oldest first (only complete ones exist: they are written atomically)."""
    return sorted((int(d.name.removeprefix("step_")), d) for d in (run_dir / CHECKPOINTS).glob("step_*"))


def latest_checkpoint(run_dir: Path) -> Path:
    """The highest checkpoints/step_N of a run folder."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"--resume: {run_dir / CHECKPOINTS} holds no checkpoint to resume from")
    return steps[-1][1]


def prune_checkpoints(run_dir: Path, keep: int | None) -> list[Path]:
    """Deletes all but the newest ``keep`` checkpoints (run.keep_checkpoints; None keeps all) and returns them.
    Called after a checkpoint is complete, so a run always has one to resume from."""
    if keep is None:
        return []
    old = [folder for _, folder in checkpoint_steps(run_dir)[:-keep]]
    for folder in old:
        shutil.rmtree(folder)
    return old


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """None, "latest" (the run folder's newest checkpoint) or a checkpoints/step_N folder."""
    if resume is None:
        return None
    checkpoint = latest_checkpoint(run_dir) if resume == "latest" else Path(resume)
    if not (checkpoint / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume: {checkpoint} is not a checkpoint folder (no trainer_state.json)")
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    newer = [d.name for s, d in checkpoint_steps(run_dir) if s > step]
    if newer:  # they belong to the history this resume abandons; a later --resume latest would pick them up
        raise FileExistsError(
            f"--resume {checkpoint}: {run_dir / CHECKPOINTS} holds newer checkpoints {newer}; delete them to go on "
            f"from step {step}, or resume from the latest"
        )
    return checkpoint


# Keys whose default changes what a run does, added after runs existed: a saved config without one ran as this says.
BEFORE_KEY_EXISTED = {"algorithm.rollout_correction.level": "none"}


def check_same_run(cfg: JobConfig, run_dir: Path) -> None:
    """A resumed run must use the config it was started with; only run.steps may grow. A key the saved config
    lacks (added to the code since the run started) counts as what the run had: its default, or for a key whose
    default changes the training, its value in ``BEFORE_KEY_EXISTED``."""
    saved = json.loads((run_dir / "config.json").read_text())
    now = json.loads(cfg.model_dump_json())
    saved["run"].pop("steps"), now["run"].pop("steps")
    defaults = {**_flat(json.loads(JobConfig().model_dump_json())), **BEFORE_KEY_EXISTED}
    saved_flat, now_flat = _flat(saved), _flat(now)
    changed = [key for key, value in now_flat.items() if value != saved_flat.get(key, defaults.get(key))]
    if changed:
        raise ValueError(f"--resume: the config differs from {run_dir / 'config.json'} at {changed[:5]}")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def prepare_run_dir(cfg: JobConfig, resuming: bool) -> Path:
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if resuming:
        check_same_run(cfg, run_dir)
    elif (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another run.name, delete it, or --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", cfg.model_dump_json(indent=2))
    return run_dir


def save_checkpoint(
    actors: ActorGroups, run_dir: Path, step: int, state: dict, pending: stages.Generation | None = None
) -> Path:
    """checkpoints/step_N/, written atomically: policy/ (PEFT experts + router), learner/ (each rank's optimizer,
    scheduler, critic, RNG; see learner_state.py), trainer_state.json (step, version, data cursor, rewards) and,
    one step off policy, the next step's replies (already sampled with older weights than the checkpoint's)."""
    target = run_dir / CHECKPOINTS / f"step_{step}"
    with atomic_dir(target) as tmp:
        write_folder(tmp / "policy", ray.get(actors.learners[0].policy_files.remote()))
        for rank, (tensors, document) in enumerate(ray.get([lr.training_state.remote() for lr in actors.learners])):
            learner_state.save(tmp / "learner", rank, tensors, document)
        if pending is not None:
            batch, seconds = pending.wait()
            tensors, lists = batch.state()
            save_file(tensors, str(tmp / f"{PENDING}.safetensors"))
            meta = {"version": pending.version, "seconds": seconds, "lists": lists}
            (tmp / f"{PENDING}.json").write_text(json.dumps(meta))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return target


def restore_checkpoint(
    actors: ActorGroups, checkpoint: Path, stream: PromptStream
) -> tuple[dict, stages.Generation | None]:
    """Loads a checkpoint into learners, data stream and reward statistics. Returns (trainer_state.json: step,
    weight version, KL coefficient..., the next step's replies when the run samples one step off policy)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = [learner_state.load(checkpoint / "learner", rank) for rank in range(len(actors.learners))]
    policy = ray.put(read_folder(checkpoint / "policy"))  # learners on other nodes cannot read the driver's disk
    ray.get([lr.load_training_state.remote(policy, *s) for lr, s in zip(actors.learners, saved, strict=True)])
    stream.load_state_dict(state["data"])
    ray.get(actors.reward.load_state_dict.remote(state["rewards"]))
    pending = None
    if (checkpoint / f"{PENDING}.json").is_file():
        meta = json.loads((checkpoint / f"{PENDING}.json").read_text())
        batch = RolloutBatch.from_state(load_file(str(checkpoint / f"{PENDING}.safetensors")), meta["lists"])
        pending = stages.Generation(meta["version"], None, done=(batch, meta["seconds"]))
    return state, pending


def first_sync(actors: ActorGroups, expected_version: int) -> dict[str, float]:
    """The complete snapshot every rollout needs before it samples (a vLLM rollout has no base copy to build the
    adapters on; a resumed one holds what it loaded, not the checkpoint). Returns its size and time, which the first
    step of this run or resume logs as ``sync/full_bytes`` and ``sync/full_seconds`` beside the per-step
    trained-only ``sync/*``."""
    start = time.perf_counter()
    version, nbytes = stages.sync_weights(actors)
    if version != expected_version:
        raise RuntimeError(f"learners hold weights v{version}, the run expects v{expected_version}")
    return {"sync/full_bytes": float(nbytes), "sync/full_seconds": time.perf_counter() - start}


def step_seed(cfg: JobConfig, step: int) -> int:
    """The sampling seed of a step (every rollout actor spreads it over its prompts: rollout.prompt_seeds)."""
    return cfg.run.seed * 100_003 + step


def evaluate(
    cfg: JobConfig, actors: ActorGroups, held_out: list[PromptRecord], version: int
) -> tuple[dict[str, float], list[dict]]:
    """run.eval_every's evaluation of the rollouts' weights ``version``: always step 0's seed, which no training
    step uses, so evaluations differ by the weights alone."""
    return stages.evaluate(actors, held_out, version, step_seed(cfg, 0), cfg.data.prompts_per_step)


def fit(cfg: JobConfig, resume: str | None = None) -> Path:
    """Runs RL steps up to cfg.run.steps and returns the run folder; actors are released even when a step fails.

    ``resume``: "latest" or a checkpoint folder; the run continues exactly where the checkpoint left it.
    """
    preflight(cfg.rewards)  # a missing reward model folder fails here, before Ray starts
    checkpoint = resolve_resume(Path(cfg.run.output_dir) / cfg.run.name, resume)
    run_dir = prepare_run_dir(cfg, resuming=checkpoint is not None)
    records = load_prompts(cfg.data.path, system_prompt=cfg.data.system_prompt)
    held_out = None
    if cfg.run.eval_every:
        held_out = load_eval_prompts(cfg.data.eval_path, cfg.data.eval_prompts, system_prompt=cfg.data.system_prompt)
    check_prompts_fit(cfg, records + (held_out or []))
    stream = PromptStream(records, cfg.data.prompts_per_step, seed=cfg.run.seed)
    anchor = cfg.algorithm.pole_anchor
    persona_data = load_persona_data(anchor.data_dir) if anchor.coef > 0 else None
    start_ray(cfg)
    actors = create_actors(cfg)
    try:
        if persona_data is not None:
            stages.set_pole_anchor(actors, persona_data)
        state, pending = restore_checkpoint(actors, checkpoint, stream) if checkpoint else ({}, None)
        start, version = state.get("step", 0), state.get("version", 0)
        kl_coef = state.get("kl_coef", cfg.algorithm.kl.coef)  # saved since kl.target exists; fixed before
        startup = first_sync(actors, version)
        train(cfg, actors, stream, run_dir, start, version, startup, pending, held_out, kl_coef)
    finally:
        release(actors)
    return run_dir


def train(
    cfg: JobConfig,
    actors: ActorGroups,
    stream: PromptStream,
    run_dir: Path,
    start: int = 0,
    version: int = 0,
    startup: dict[str, float] | None = None,
    pending: stages.Generation | None = None,
    held_out: list[PromptRecord] | None = None,
    kl_coef: float | None = None,
) -> None:
    """The RL loop, one stage per block, from step ``start + 1`` with rollouts holding weights ``version``;
    ``startup`` metrics (the first sync) are logged with the first step; ``pending``: a resumed run's next
    replies, sampled one step off policy before its checkpoint; ``held_out``: the prompts of run.eval_every's
    evaluations; ``kl_coef``: beta at the start (default algorithm.kl.coef), adapted after each step when
    algorithm.kl.target is set."""
    experts = cfg.policy.experts
    kl = cfg.algorithm.kl
    kl_coef = kl.coef if kl_coef is None else kl_coef
    tracker = Tracker(run_dir, cfg.run.steps, experts, start_step=start)
    try:
        if held_out and start == 0:  # the starting point every later evaluation compares with
            tracker.log_eval(0, *evaluate(cfg, actors, held_out, version))
        for step in range(start + 1, cfg.run.steps + 1):
            timings: dict[str, float] = {}
            step_start = time.perf_counter()

            # 1. route the prompts on the learners, sample G replies per prompt with that persona mixture; one step
            #    off policy, this step's replies were sampled during the last update, and the next step's start now
            #    (also after the last step, so that a checkpoint is the same whatever run.steps is)
            if pending is None:
                pending = stages.sample(actors, stream.next_batch(), version, step_seed(cfg, step), timings)
            with stages.timed(timings, "gen_wait"):
                batch, timings["timing/gen"] = pending.wait()
            lag, pending = version - pending.version, None
            if cfg.rollout.one_step_off_policy:
                pending = stages.sample(actors, stream.next_batch(), version, step_seed(cfg, step + 1), timings)

            # 2. social-emotional rewards minus safety penalties (reward actor), every component kept for the log;
            # 3. pi_old (current router + experts), pi_ref (adapters off) and PPO's values, on the learners; 2 and 3
            #    at once when they use different devices (placement.overlap_rewards)
            scored = stages.rewards_and_scores(actors, batch, timings, overlap=cfg.overlaps_rewards)

            # 4. advantages: GRPO group baselines or PPO's GAE (cheap; on the driver), after DAPO's soft punishment of
            #    replies near the token limit (algorithm.overlong.buffer)
            with stages.timed(timings, "adv"):
                length_metrics = stages.penalise_overlong(batch, cfg)
                stages.compute_advantages(batch, cfg.algorithm, kl_coef)

            # 5. update router + experts on the DeepSpeed learners
            with stages.timed(timings, "update"):
                learner_metrics = stages.update(actors, batch, cfg, kl_coef)

            # 6. push the new adapters (not the base) to the rollout actors, after the replies they are sampling
            if pending is not None:
                with stages.timed(timings, "gen_wait"):
                    pending.wait()
            with stages.timed(timings, "sync"):
                version, sync_bytes = stages.sync_weights(actors)

            # 7. evaluate on held-out prompts (run.eval_every), log, checkpoint
            evaluation = None
            if held_out and (step % cfg.run.eval_every == 0 or step == cfg.run.steps):
                with stages.timed(timings, "eval"):
                    evaluation = evaluate(cfg, actors, held_out, version)
            metrics = {
                **stages.rollout_metrics(batch, experts, timings["timing/gen"]),
                **{key: value.mean().item() for key, value in scored.components.items()},
                **length_metrics,
                **learner_metrics,
                "kl/coef": kl_coef,  # the beta this step used
                "rollout/version_lag": float(lag),  # updates between the sampling weights and the learner's
                "sync/bytes": float(sync_bytes),
                "sync/seconds": timings["timing/sync"],
                **timings,
                "time/step_s": time.perf_counter() - step_start,
                **(startup if step == start + 1 and startup else {}),
            }
            tracker.log(step, metrics)
            if kl.target is not None:  # the next step's beta, from this step's KL
                kl_coef = adaptive_kl_coef(kl_coef, learner_metrics["kl"], kl.target, kl.horizon, len(batch))
            if evaluation is not None:
                tracker.log_eval(step, *evaluation)
            if step % cfg.run.save_every == 0 or step == cfg.run.steps:
                state = {
                    "step": step,
                    "version": version,
                    "kl_coef": kl_coef,
                    "data": stream.state_dict(),
                    "rewards": ray.get(actors.reward.state_dict.remote()),
                }
                save_checkpoint(actors, run_dir, step, state, pending)
                prune_checkpoints(run_dir, cfg.run.keep_checkpoints)
        with atomic_dir(run_dir / "policy") as tmp:
            write_folder(tmp, ray.get(actors.learners[0].policy_files.remote()))
    finally:
        tracker.close()  # a failed step still leaves its TensorBoard events and the curves so far
