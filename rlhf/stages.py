"""The driver's stage helpers: each moves data between actors or does cheap math on the driver."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import ray
import torch

from rewards.compose import ComposedRewards
from rlhf.advantages import AdvantageInputs, get_advantage
from rlhf.batch import RolloutBatch, concat
from rlhf.build import RoutedPrompts
from rlhf.config import AlgorithmConfig, JobConfig
from rlhf.kl import get_kl_estimator, kl_shaped_token_rewards, masked_kl
from rlhf.learner import MinibatchCounts, loss_mask
from rlhf.masked import masked_mean, masked_sum, masked_whiten
from rlhf.overlong import soft_overlong_penalty
from rlhf.placement import ActorGroups
from rlhf.pole_anchor import PersonaData
from rlhf.prompts import PromptRecord


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    key = f"timing/{stage}"
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start  # a stage run twice in a step adds up


def set_pole_anchor(actors: ActorGroups, data: PersonaData) -> None:
    """Hands stage 1a's persona data (text, through the object store) to every learner rank."""
    ref = ray.put(data)
    ray.get([learner.set_pole_anchor.remote(ref) for learner in actors.learners])


def route(actors: ActorGroups, records: list[PromptRecord]) -> RoutedPrompts:
    """The learners' routing weights (N, E) for the step's prompts and the features the router read, each rank
    routing a contiguous share (the ranks hold the same router; a prompt-only forward without gradient, with no
    collective under ZeRO <= 2)."""
    n = len(actors.learners)
    bounds = [len(records) * i // n for i in range(n + 1)]
    futures = [
        learner.route.remote(records[lo:hi])
        for learner, lo, hi in zip(actors.learners, bounds[:-1], bounds[1:], strict=True)
        if hi > lo
    ]
    return RoutedPrompts.cat(ray.get(futures))


@dataclass
class Generation:
    """One step's replies: being sampled by the rollout actors (Ray futures), or already in hand (a resumed run's)."""

    version: int  # the adapter weights they are sampled with
    features: torch.Tensor | None  # (N, d) what the router read for each prompt
    refs: list[ray.ObjectRef] = field(default_factory=list)
    done: tuple[RolloutBatch, float] | None = None
    first_group: int = 0  # group id of the first prompt

    def wait(self) -> tuple[RolloutBatch, float]:
        """(the batch, the slowest rollout actor's own sampling seconds); blocks until every actor has answered."""
        if self.done is None:
            parts = ray.get(self.refs)
            batch = concat([part for part, _ in parts])
            batch.situation_features = self.features[batch.group_ids - self.first_group]
            self.done = batch, max(seconds for _, seconds in parts)
        return self.done


def sample(
    actors: ActorGroups,
    records: list[PromptRecord],
    version: int,
    seed: int,
    timings: dict[str, float],
    first_group: int = 0,
) -> Generation:
    """Routes the prompts on the learners (timed as ``route``), then starts sampling them on the rollout actors
    with weights ``version`` and returns without waiting. The prompts and their routing weights are split over
    the actors; group ids (from ``first_group``) stay global, and so do the sampling seeds derived from them
    (rollout.prompt_seeds). The batch carries the router's features for its rows, so the update routes again
    without another forward."""
    with timed(timings, "route"):
        routed = route(actors, records)
    n = len(actors.rollouts)
    bounds = [len(records) * i // n for i in range(n + 1)]
    refs = [
        actor.generate.remote(records[lo:hi], routed.weights[lo:hi], first_group + lo, version, seed)
        for actor, lo, hi in zip(actors.rollouts, bounds[:-1], bounds[1:], strict=True)
        if hi > lo
    ]
    return Generation(version, routed.features, refs, first_group=first_group)


def evaluate(
    actors: ActorGroups, records: list[PromptRecord], version: int, seed: int, prompts_per_batch: int
) -> tuple[dict[str, float], list[dict]]:
    """Held-out replies under the rollouts' weights ``version`` and the same ``seed`` every time (so evaluations
    differ by the weights, not by the dice), ``prompts_per_batch`` prompts at a time (what the rollouts are sized
    for), scored without reward normalisation and without touching its statistics. Returns (``eval/...``
    metrics, one row per reply: prompt, category, reply, reward)."""
    parts = [
        sample(actors, records[i : i + prompts_per_batch], version, seed, {}, first_group=i).wait()
        for i in range(0, len(records), prompts_per_batch)
    ]
    batch, seconds = concat([b for b, _ in parts]), sum(s for _, s in parts)
    scored = ray.get(
        actors.reward.score.remote(batch.prompts, batch.completions, training=False, category=batch.categories)
    )
    metrics = {
        "eval/reward/mean": scored.rewards.mean().item(),
        "eval/reward/std": scored.rewards.std().item() if len(batch) > 1 else 0.0,
        **{f"eval/{key}": value.mean().item() for key, value in scored.components.items()},
        **category_means(scored.rewards, batch.categories, "eval/category/{}/reward"),
        "eval/response_len": batch.response_mask.sum(-1).float().mean().item(),
        "eval/response/clip_frac": batch.truncated.float().mean().item(),
        "eval/seconds": seconds,
    }
    replies = [
        {"prompt": p, "category": c, "reply": r, "reward": round(float(w), 4)}
        for p, c, r, w in zip(batch.prompts, batch.categories, batch.completions, scored.rewards, strict=True)
    ]
    return metrics, replies


def rewards(actors: ActorGroups, batch: RolloutBatch) -> ComposedRewards:
    """The reward actor's composed rewards (B,) and raw components for the batch's replies; sets ``batch.rewards``."""
    scored = ray.get(_request_rewards(actors, batch))
    batch.rewards = scored.rewards
    return scored


def score(actors: ActorGroups, batch: RolloutBatch) -> None:
    """Fills old_logprobs, ref_logprobs (and values for PPO), (B, T), computed by the learners on their shards."""
    _fill_scores(batch, ray.get(_request_scores(actors, batch)))


def rewards_and_scores(
    actors: ActorGroups, batch: RolloutBatch, timings: dict[str, float], overlap: bool
) -> ComposedRewards:
    """``rewards`` then ``score``, or with ``overlap`` both at once: neither needs the other, and they run on
    different actors (on a GPU cluster, different devices). Overlapped, ``timing/reward`` and ``timing/ref`` each
    run from the common start to that stage's last result, and the first failure raises without waiting for the
    other stage."""
    if not overlap:
        with timed(timings, "reward"):
            scored = rewards(actors, batch)
        with timed(timings, "ref"):
            score(actors, batch)
        return scored
    start = time.perf_counter()
    reward_ref, score_refs = _request_rewards(actors, batch), _request_scores(actors, batch)
    stage_of = {reward_ref: "reward", **{ref: "ref" for ref in score_refs}}
    left = {"reward": 1, "ref": len(score_refs)}
    results, pending = {}, list(stage_of)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        results[done[0]] = ray.get(done[0])  # a failed stage raises here, as soon as it ends
        stage = stage_of[done[0]]
        left[stage] -= 1
        if not left[stage]:
            timings[f"timing/{stage}"] = time.perf_counter() - start
    _fill_scores(batch, [results[ref] for ref in score_refs])
    scored = results[reward_ref]
    batch.rewards = scored.rewards
    return scored


def _request_rewards(actors: ActorGroups, batch: RolloutBatch) -> ray.ObjectRef:
    return actors.reward.score.remote(batch.prompts, batch.completions, category=batch.categories)


def _request_scores(actors: ActorGroups, batch: RolloutBatch) -> list[ray.ObjectRef]:
    shards = batch.shards(len(actors.learners))
    return [learner.score.remote(shard) for learner, shard in zip(actors.learners, shards, strict=True)]


def _fill_scores(batch: RolloutBatch, results: list[dict[str, torch.Tensor]]) -> None:
    for key in results[0]:
        setattr(batch, key, torch.cat([r[key] for r in results]))


def category_means(values: torch.Tensor, categories: list[str | None], key: str) -> dict[str, float]:
    """Mean of ``values`` (B,) per situation category, under ``key.format(category)``; rows without one are left
    out."""
    by_category: dict[str, list[int]] = {}
    for row, category in enumerate(categories):
        if category is not None:
            by_category.setdefault(category, []).append(row)
    return {key.format(c): values[rows].float().mean().item() for c, rows in by_category.items()}


def compute_advantages(batch: RolloutBatch, algo: AlgorithmConfig, kl_coef: float | None = None) -> None:
    """Advantages and returns (B, T) on the driver.

    grpo, algorithm.advantage:
      grpo / rloo:  group-relative advantages of the sequence rewards (group mean and std, or the leave-one-out
                    mean); with kl.placement=reward, beta * sum_t KL_t is subtracted from each sequence reward first.
      reinforce++:  the reward-to-go of per-token rewards (the sequence reward at the last token; -beta * KL_t at
                    every token when kl.placement=reward), whitened over the batch.
    ppo:  GAE over those per-token rewards against the critic's values; advantages optionally whitened over the batch.
    """
    mask = batch.response_mask
    beta = algo.kl.coef if kl_coef is None else kl_coef  # the adaptive controller's beta, when kl.target is set
    in_reward = beta if algo.kl.placement == "reward" else 0.0
    kl = torch.zeros_like(mask, dtype=torch.float32)  # (B, T); only the in-reward placement reads it here
    if algo.kl.placement == "reward":
        kl = masked_kl(get_kl_estimator(algo.kl.estimator), batch.old_logprobs, batch.ref_logprobs, mask)
    if algo.name == "grpo" and algo.advantage != "reinforce++":
        rewards = batch.rewards - in_reward * masked_sum(kl, mask, dim=-1)  # (B,)
        inputs = AdvantageInputs(mask, rewards=rewards, group_ids=batch.group_ids)
        options = {"scale_by_std": algo.scale_by_std, "normalize": algo.normalize} if algo.advantage == "grpo" else {}
        batch.advantages, batch.returns = get_advantage(algo.advantage)(inputs, **options)
        return
    batch.token_rewards = kl_shaped_token_rewards(batch.rewards, kl, mask, in_reward)  # (B, T)
    if algo.name == "grpo":  # reinforce++
        inputs = AdvantageInputs(mask, token_rewards=batch.token_rewards)
        batch.advantages, batch.returns = get_advantage("reinforce++")(inputs, gamma=algo.gamma)
        return
    inputs = AdvantageInputs(mask, token_rewards=batch.token_rewards, values=batch.values)
    advantages, batch.returns = get_advantage("gae")(inputs, gamma=algo.gamma, lam=algo.lam)
    batch.advantages = masked_whiten(advantages, mask) if algo.whiten_advantages else advantages


def penalise_overlong(batch: RolloutBatch, cfg: JobConfig) -> dict[str, float]:
    """algorithm.overlong.buffer: DAPO's soft punishment of replies near rollout.max_new_tokens, added to
    ``batch.rewards`` ahead of the advantages. Returns ``reward/overlong``, its batch mean (nothing when off)."""
    overlong = cfg.algorithm.overlong
    if not overlong.buffer:
        return {}
    lengths = batch.response_mask.sum(-1)
    penalty = soft_overlong_penalty(lengths, cfg.rollout.max_new_tokens, overlong.buffer, overlong.penalty)
    batch.rewards = batch.rewards + penalty.to(batch.rewards.dtype)
    return {"reward/overlong": penalty.mean().item()}


def minibatch_counts(batch: RolloutBatch, cfg: JobConfig) -> list[MinibatchCounts]:
    """Global trained-token (``learner.loss_mask``) and sequence counts of each minibatch, summed over the learner
    shards."""
    shards = batch.shards(cfg.learner.num_learners)
    mask_truncated = cfg.algorithm.overlong.mask_truncated
    per_shard = [
        [loss_mask(mb, mask_truncated).sum().item() for mb in s.shards(cfg.algorithm.minibatches)] for s in shards
    ]
    seqs = len(batch) / cfg.algorithm.minibatches
    return [MinibatchCounts(tokens=sum(col), seqs=seqs) for col in zip(*per_shard, strict=True)]


def update(actors: ActorGroups, batch: RolloutBatch, cfg: JobConfig, kl_coef: float | None = None) -> dict[str, float]:
    """One learner update on every shard (``kl_coef``: this step's beta, default algorithm.kl.coef); metrics
    averaged over ranks."""
    counts = minibatch_counts(batch, cfg)
    shards = batch.shards(len(actors.learners))
    results = ray.get([lr.update.remote(s, counts, kl_coef) for lr, s in zip(actors.learners, shards, strict=True)])
    return {key: sum(r[key] for r in results) / len(results) for key in results[0]}


def sync_weights(actors: ActorGroups) -> tuple[int, int]:
    """Rank 0's adapter snapshot -> object store -> every rollout actor, without passing through the driver.
    Returns (version, bytes)."""
    state_ref, meta_ref = actors.learners[0].publish_adapters.remote()
    ray.get([actor.set_weights.remote(state_ref) for actor in actors.rollouts])
    version, nbytes = ray.get(meta_ref)
    return version, nbytes


def rollout_metrics(batch: RolloutBatch, experts: tuple[str, ...], gen_seconds: float) -> dict[str, float]:
    """The step's reward, reply-length, throughput and routing metrics; ``response/clip_frac``: the share of
    replies cut off at rollout.max_new_tokens."""
    lengths = batch.response_mask.sum(-1).float()  # (B,)
    weights = batch.routing_weights.float()  # (B, E)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
    critic = {}
    if batch.values is not None:
        critic = {
            "critic/values": masked_mean(batch.values, batch.response_mask).item(),
            "critic/returns": masked_mean(batch.returns, batch.response_mask).item(),
        }
    return {
        **critic,
        "reward/mean": batch.rewards.mean().item(),
        "reward/std": batch.rewards.std().item() if len(batch) > 1 else 0.0,
        "response_len": lengths.mean().item(),
        "response/clip_frac": batch.truncated.float().mean().item(),
        "rollout/tokens_per_s": lengths.sum().item() / max(gen_seconds, 1e-9),
        "router/entropy": entropy.item(),
        **{f"router/weight/{e}": w.item() for e, w in zip(experts, weights.mean(0), strict=True)},
    }
