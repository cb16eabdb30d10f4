"""One data-parallel learner rank: the persona policy inside a DeepSpeed engine (ZeRO, bf16/fp32, offload).

Plain class; the Ray actor in learner_actor.py only delegates to it. The loss is aggregated with global token
and sequence counts, so N ranks reproduce the single-rank loss (DeepSpeed averages gradients over ranks).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from policies.attention import register_fp32_attention
from policies.export import load_policy_weights
from policies.policy import bf16_autocast, token_logprobs
from policies.router import replay_selection
from rlhf import learner_state
from rlhf.aggregation import aggregate
from rlhf.batch import RolloutBatch
from rlhf.build import RoutedPrompts, build_policy, route_records
from rlhf.config import JobConfig
from rlhf.critic import ValueHead
from rlhf.kl import get_kl_estimator, masked_kl
from rlhf.masked import masked_mean
from rlhf.overlong import without_truncated
from rlhf.pole_anchor import PersonaData, PoleAnchor
from rlhf.policy_loss import logprobs_and_entropy, policy_loss, value_loss
from rlhf.prompts import PromptRecord
from rlhf.rollout_correction import mismatch_kl, rollout_is_weights
from rlhf.router_losses import router_anchor_kl
from rlhf.sync import DELTA_BITS, AdapterState, SyncedAdapters, delta_snapshot, held_snapshot, snapshot

ROLLOUT_COPY = "rollout_copy/"  # checkpoint keys of the experts the rollouts held (delta sync)


@dataclass(frozen=True)
class MinibatchCounts:
    """Valid tokens and sequences of one minibatch summed over all learner ranks (for the aggregation)."""

    tokens: float
    seqs: float


def import_deepspeed() -> Any:
    """``import deepspeed`` with the CPU accelerator on CPU hosts. Callers that pick a free port for the process
    group import it first: the import takes seconds, and a port picked before it could be taken meanwhile."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must precede the first deepspeed import
    import deepspeed

    return deepspeed


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """torch.distributed through DeepSpeed: gloo on CPU hosts, nccl on GPU hosts."""
    deepspeed = import_deepspeed()
    os.environ.update(
        MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
    )  # fmt: skip
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)


def attention_implementation(cfg: JobConfig) -> str | None:
    """The attention the learner's policy runs with: ``register_fp32_attention()``'s name, or None to keep the
    model's own (sdpa)."""
    if cfg.learner.attention == "fp32" or (cfg.learner.attention == "auto" and not torch.cuda.is_available()):
        return register_fp32_attention()
    return None


def deepspeed_config(cfg: JobConfig, grad_accum: int) -> dict:
    lc = cfg.learner
    zero: dict = {"stage": lc.zero_stage}
    if lc.offload_optimizer:  # the config requires ZeRO >= 1
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "zero_force_ds_cpu_optimizer": False,  # offload steps our torch AdamW on the CPU, not DeepSpeed's CPUAdam
        "train_micro_batch_size_per_gpu": lc.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": lc.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": lc.dtype == "bf16"},
        "communication_data_type": "fp32",  # gradients averaged over ranks in fp32, also when the weights are bf16
        "zero_allow_untested_optimizer": True,  # torch AdamW: param groups give the router its own lr
        "steps_per_print": 10**9,
    }


# Metrics averaged over the micro-steps that report them; every other one is a token mean (see Learner.update).
PER_STEP_METRICS = ("router/", "pole_anchor/", "grad_norm")


def loss_mask(mb: RolloutBatch, mask_truncated: bool) -> Tensor:
    """(b, T) the tokens the loss trains on: the response tokens, without cut-off replies under
    ``algorithm.overlong.mask_truncated``."""
    return without_truncated(mb.response_mask, mb.truncated) if mask_truncated else mb.response_mask


class Learner:
    def __init__(self, cfg: JobConfig, world_size: int):
        import deepspeed

        self.cfg = cfg
        self.world_size = world_size
        self.policy = build_policy(cfg, torch.bfloat16 if cfg.learner.dtype == "bf16" else torch.float32)
        attention = attention_implementation(cfg)
        if attention is not None:
            self.policy.model.set_attn_implementation(attention)
        # The router the run starts from (before any checkpoint is restored), frozen: the anchor's reference.
        self.anchor_router = None
        if cfg.algorithm.router_anchor_coef > 0 and cfg.policy.train_router:
            self.anchor_router = copy.deepcopy(self.policy.router).float().requires_grad_(False).eval()
        self.policy.set_trainable(
            router=cfg.policy.train_router, experts=cfg.policy.train_experts, lora_a=cfg.policy.train_lora_a
        )
        if cfg.learner.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.policy.train()
        # PPO's value head lives beside the policy in one DeepSpeed module, so one engine steps both.
        self.critic: ValueHead | None = None
        trained = nn.ModuleDict({"policy": self.policy})
        if cfg.algorithm.name == "ppo":
            self.critic = trained["critic"] = ValueHead(
                self.policy.model.config.hidden_size, cfg.algorithm.critic_hidden
            )
        rows = cfg.data.prompts_per_step * cfg.rollout.samples_per_prompt // (world_size * cfg.algorithm.minibatches)
        self.grad_accum = math.ceil(rows / cfg.learner.micro_batch_size)  # micro-batches per optimizer step
        groups = [
            {
                "name": "router",
                "params": [p for p in self.policy.router.parameters() if p.requires_grad],
                "lr": cfg.learner.router_lr,
            },
            {
                "name": "experts",
                "params": [p for n, p in self.policy.named_parameters() if "lora_" in n and p.requires_grad],
            },
            {
                "name": "critic",
                "params": list(self.critic.parameters()) if self.critic else [],
                "lr": cfg.learner.critic_lr,
            },
        ]
        groups = [g for g in groups if g["params"]]
        self.group_names = [g.pop("name") for g in groups]  # kept here: a restored optimizer state drops extra keys
        optimizer = torch.optim.AdamW(groups, lr=cfg.learner.lr, weight_decay=cfg.learner.weight_decay)
        warmup = cfg.learner.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=trained,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, self.grad_accum),
        )
        self.device = self.engine.device  # DeepSpeed moved the policy there (a GPU on GPU hosts)
        if self.anchor_router is not None:
            self.anchor_router.to(self.device)
        self.version = 0
        self.published = False
        self.synced = SyncedAdapters() if cfg.rollout.sync_delta != "none" else None  # the rollouts' copy
        self.rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.kl_estimator = get_kl_estimator(cfg.algorithm.kl.estimator)
        self.kl_coef = cfg.algorithm.kl.coef  # beta of the current update (update() sets it)
        self.mixed_bf16 = cfg.learner.dtype == "bf16-mixed"
        self.pole_anchor: PoleAnchor | None = None
        self.anchor_index = 0  # block of pole-anchor pairs for the next optimizer step

    def set_pole_anchor(self, data: PersonaData) -> int:
        """Turns on ``algorithm.pole_anchor`` with stage 1a's persona data; returns the number of paired rows."""
        self.pole_anchor = PoleAnchor(self.policy, data, self.cfg.algorithm.pole_anchor, seed=self.cfg.run.seed)
        return len(self.pole_anchor.rows)

    def route(self, records: list[PromptRecord]) -> RoutedPrompts:
        """The current router's weights (N, E) for these prompts and the features it read, on the CPU: the rollouts
        sample with the weights (and keep no base copy to route with); the update re-routes from the features (the
        base is frozen, so they stay valid). Computed as the update does (outside autocast, in the engine's dtype),
        ``micro_batch_size`` prompts per forward so the activations stay within what the update needs."""
        size = self.cfg.learner.micro_batch_size
        max_tokens = self.cfg.data.max_prompt_tokens
        return RoutedPrompts.cat(
            [route_records(self.policy, records[i : i + size], max_tokens) for i in range(0, len(records), size)]
        )

    def prompt_groups(self, mb: RolloutBatch) -> Tensor | None:
        """The rows that share a prompt, when the prompt runs once per group (``learner.shared_prompt_forward``)
        and some group has more than one row here (else sharing saves nothing and costs a second call)."""
        if not self.cfg.learner.shares_prompts or mb.group_ids.unique().numel() == len(mb):
            return None
        return mb.group_ids

    @staticmethod
    def features(mb: RolloutBatch) -> Tensor:
        """The router's input for these rows, as the route stage computed it (``stages.Generation.wait`` sets it)."""
        if mb.situation_features is None:
            raise ValueError(
                "the batch carries no situation_features: the update routes from the route stage's features "
                "(stages.Generation.wait attaches them; a hand-built batch must set them)"
            )
        return mb.situation_features

    def micro_batches(self, batch: RolloutBatch, minibatches: int = 1) -> list[RolloutBatch]:
        """``micro_batch_size`` rows at a time in order within each of ``minibatches`` contiguous shards, each
        without its all-padding columns. The score pass splits a shard as the update splits its minibatches, so
        the first optimizer step's micro-batches are exactly the ones pi_old came from (ratio 1, not bf16 noise
        from a different padding width or prompt grouping)."""
        size = self.cfg.learner.micro_batch_size
        return [
            part.select(slice(i, i + size)).trimmed()
            for part in batch.shards(minibatches)
            for i in range(0, len(part), size)
        ]

    @torch.no_grad()
    def score(self, batch: RolloutBatch) -> dict[str, Tensor]:
        """Before the update: ``ref_logprobs`` (pi_ref, adapters off) and, when the algorithm needs them
        (``AlgorithmConfig.needs_old_logprobs``), ``old_logprobs`` (pi_old, current router + experts) and PPO's
        ``values`` from the same forward; each (B, T), 0 at padding."""
        temperature = self.cfg.rollout.temperature
        batch = batch.to(self.device)
        columns: dict[str, list[Tensor]] = {"old_logprobs": [], "ref_logprobs": [], "values": []}
        for mb in self.micro_batches(batch, self.cfg.algorithm.minibatches):
            groups = self.prompt_groups(mb)
            if self.cfg.algorithm.needs_old_logprobs:
                weights = replay_selection(self.policy.router(self.features(mb)).log_probs, mb.routing_weights)
                with self.policy.mixture(weights), bf16_autocast(self.mixed_bf16):
                    logits, hidden = self.policy.response_outputs(
                        mb.input_ids,
                        mb.attention_mask,
                        mb.response_len,
                        temperature,
                        with_hidden=self.critic is not None,
                        groups=groups,
                    )
                columns["old_logprobs"].append(token_logprobs(logits, mb.response_ids))
                if self.critic is not None:
                    columns["values"].append(self.critic(hidden.float()))
            with bf16_autocast(self.mixed_bf16):
                columns["ref_logprobs"].append(
                    self.policy.ref_logprobs(mb.input_ids, mb.attention_mask, mb.response_len, temperature, groups)
                )
        width = batch.response_len  # micro-batches come trimmed: pad each back to the batch's response width
        return {
            key: (torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]) * batch.response_mask).cpu()
            for key, parts in columns.items()
            if parts
        }

    def update(
        self, shard: RolloutBatch, counts: list[MinibatchCounts], kl_coef: float | None = None
    ) -> dict[str, float]:
        """ppo_epochs x minibatches optimizer steps on this rank's shard, with KL coefficient ``kl_coef`` (default
        algorithm.kl.coef; the driver's adaptive controller passes its own).

        ``loss`` is this rank's share of each minibatch loss (sum over its micro-batches of S * dp / N_global),
        averaged over minibatches; the driver's mean over ranks is then the full-batch loss. Token metrics (kl,
        entropy, clip_frac, rollout_is/*, critic/*) are means over all the update's loss tokens, each micro-step
        weighted by its token count: a micro-step with none (every reply cut off, under mask_truncated) does not
        pull them toward 0. The router's, the pole anchor's and grad_norm are means over the steps reporting them.
        """
        algo = self.cfg.algorithm
        self.kl_coef = algo.kl.coef if kl_coef is None else kl_coef
        lr = {  # the rates of this update's first optimizer step
            f"lr/{name}": group["lr"] for name, group in zip(self.group_names, self.optimizer.param_groups, strict=True)
        }
        minibatches = shard.to(self.device).shards(algo.minibatches)
        losses: list[Tensor] = []
        sums: dict[str, Tensor] = {}
        seen: dict[str, Tensor] = {}  # tokens, or micro-steps, behind each metric (pole_anchor/*: optimizer steps)
        # Each rank takes its own blocks, numbered by optimizer steps so far, so a resumed run sees the same pairs.
        self.anchor_index = self.version * algo.ppo_epochs * algo.minibatches * self.world_size + self.rank
        for _ in range(algo.ppo_epochs):
            for minibatch, count in zip(minibatches, counts, strict=True):
                minibatch_loss = []
                for mb in self.micro_batches(minibatch):
                    metrics = self._micro_step(mb, count, len(minibatch))
                    minibatch_loss.append(metrics.pop("loss"))
                    tokens = metrics.pop("tokens")
                    for key, value in metrics.items():
                        weight = torch.ones_like(tokens) if key.startswith(PER_STEP_METRICS) else tokens
                        sums[key] = sums[key] + value * weight if key in sums else value * weight
                        seen[key] = seen[key] + weight if key in seen else weight
                losses.append(torch.stack(minibatch_loss).sum())
        self.version += 1
        keys = list(sums)
        # The metrics stay on the device until here: one host sync per update, not one per metric per micro-step.
        values = torch.stack([torch.stack(losses).mean(), *(sums[k] / seen[k].clamp_min(1) for k in keys)]).tolist()
        return {"loss": values[0], **dict(zip(keys, values[1:], strict=True)), **lr}

    def _micro_step(self, mb: RolloutBatch, count: MinibatchCounts, minibatch_rows: int) -> dict[str, Tensor]:
        algo = self.cfg.algorithm
        mask = loss_mask(mb, algo.overlong.mask_truncated)
        features = self.features(mb)  # read at routing time: the frozen base gives the same now
        routed = self.policy.router(features)
        weights = replay_selection(routed.log_probs, mb.routing_weights)  # the experts the sample was drawn with
        replayed = ((routed.weights > 0) != (mb.routing_weights > 0)).any(-1).float().mean()
        with self.policy.mixture(weights), bf16_autocast(self.mixed_bf16):
            logits, hidden = self.policy.response_outputs(
                mb.input_ids, mb.attention_mask, mb.response_len, self.cfg.rollout.temperature,
                with_hidden=self.critic is not None, groups=self.prompt_groups(mb),
            )  # fmt: skip  # (b, T, V), (b, T, H)
        logprobs, entropy = logprobs_and_entropy(logits, mb.response_ids, entropy_grad=algo.entropy_coef > 0)
        old_logprobs = logprobs.detach() if mb.old_logprobs is None else mb.old_logprobs
        per_token, metrics = policy_loss(
            logprobs, old_logprobs, mb.advantages, mask,
            clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
        )  # fmt: skip
        correction = algo.rollout_correction
        if correction.level != "none":  # the sampler's policy is not exactly pi_old: weight by their ratio
            is_weights, is_metrics = rollout_is_weights(
                old_logprobs, mb.rollout_logprobs, mask, level=correction.level, mode=correction.mode,
                clip_max=correction.clip_max, clip_min=correction.clip_min,
            )  # fmt: skip
            per_token = per_token * is_weights
        else:  # still log how far the engine is from the learner
            is_metrics = {"rollout_is/mismatch_kl": mismatch_kl(old_logprobs, mb.rollout_logprobs, mask)}
        kl = masked_kl(self.kl_estimator, logprobs, mb.ref_logprobs, mb.response_mask)  # (b, T), 0 at padding
        if algo.kl.placement == "loss":
            per_token = per_token + self.kl_coef * kl
        if algo.entropy_coef > 0:
            per_token = per_token - algo.entropy_coef * entropy
        critic_metrics: dict[str, Tensor] = {}
        if self.critic is not None:
            values = self.critic(hidden.float())  # (b, T)
            value_per_token, vf = value_loss(values, mb.values, mb.returns, mask, algo.value_clip)
            per_token = per_token + algo.vf_coef * value_per_token
            critic_metrics = {
                "critic/value_loss": masked_mean(value_per_token, mask),
                "critic/vf_error": vf["critic/vf_error"],
                "critic/vf_clip_frac": vf["critic/vf_clip_frac"],
            }
        loss = aggregate(
            per_token, mask, algo.loss_agg, global_tokens=count.tokens, global_seqs=count.seqs,
            dp_size=self.world_size, max_response_len=self.cfg.rollout.max_new_tokens,
        )  # fmt: skip
        router_terms = routed.aux_loss
        anchor_kl = None
        if self.anchor_router is not None:
            anchor_dtype = next(self.anchor_router.parameters()).dtype  # fp32 copy, also under learner.dtype=bf16
            anchor_kl = router_anchor_kl(routed.probs, self.anchor_router(features.to(anchor_dtype)).probs)
            router_terms = router_terms + algo.router_anchor_coef * anchor_kl
        loss = loss + router_terms * len(mb) / minibatch_rows
        boundary = self.engine.is_gradient_accumulation_boundary()  # this micro-step ends an optimizer step
        anchor = self._pole_anchor_loss() if boundary else None
        total = loss if anchor is None else loss + algo.pole_anchor.coef * anchor
        self.engine.backward(total * self.grad_accum)  # DeepSpeed divides by grad_accum; the counts already did
        own_norm = self._grad_norm() if boundary and self.cfg.learner.zero_stage == 0 else None
        self.engine.step()
        grad_norm = None
        if boundary:  # before clipping: ZeRO's optimizer keeps the norm it clipped with; ZeRO-0's torch AdamW none
            grad_norm = self.engine.get_global_grad_norm()
            grad_norm = own_norm if grad_norm is None else torch.as_tensor(grad_norm, dtype=torch.float32)
        reported = {
            "loss": loss,
            "tokens": mask.sum(),
            "kl": masked_mean(kl, mask),
            "entropy": masked_mean(entropy, mask),
            "clip_frac": metrics["actor/clip_frac"],
            "router/aux_loss": routed.aux_loss,
            "router/replayed_selection": replayed,  # rows whose own top-k differed from the rollout's
            **is_metrics,
            **({"router/anchor_kl": anchor_kl} if anchor_kl is not None else {}),
            **({"pole_anchor/loss": anchor} if anchor is not None else {}),
            **({"grad_norm": grad_norm} if grad_norm is not None else {}),
            **critic_metrics,
        }
        return {key: value.detach().float().to(loss.device) for key, value in reported.items()}  # 0-dim

    def _grad_norm(self) -> Tensor:
        """Global 2-norm of the trainable parameters' gradients (ZeRO-0 keeps them whole, already averaged over
        the data-parallel ranks at the accumulation boundary)."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def _pole_anchor_loss(self) -> Tensor | None:
        """Once per optimizer step (on its last micro-batch): the pole contrast on this rank's next block of pairs."""
        if self.pole_anchor is None:
            return None
        with bf16_autocast(self.mixed_bf16):
            loss = self.pole_anchor.loss(self.anchor_index)
        self.anchor_index += self.world_size
        return loss

    def adapter_state(self, trained_only: bool = False) -> AdapterState:
        dtype = torch.bfloat16 if self.cfg.rollout.sync_dtype == "bf16" else None
        return snapshot(self.policy, self.version, dtype, trained_only)

    def publish(self) -> AdapterState:
        """The snapshot for the rollouts: complete the first time (they hold what they loaded, not what this
        learner restored), then only what RL trains, as quantised differences under ``rollout.sync_delta``."""
        if self.published and self.synced is not None:
            state = delta_snapshot(self.policy, self.version, self.synced, DELTA_BITS[self.cfg.rollout.sync_delta])
        elif self.synced is not None and self.synced.version == self.version:  # resumed: what rollouts held
            state = held_snapshot(self.policy, self.synced)
        else:
            state = self.adapter_state(trained_only=self.published)
        if self.synced is not None:
            self.synced.apply(state)  # now what the rollouts hold
        self.published = True
        return state

    def training_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """This rank's optimizer, scheduler, critic, RNG and version (see learner_state.py), for a checkpoint."""
        meta = {"version": self.version, "world_size": self.world_size, "rank": self.rank}
        tensors, document = learner_state.capture(self.optimizer, self.scheduler, self.critic, meta)
        if self.synced is not None and self.synced.version is not None:  # so a resume re-sends it exactly
            tensors.update({f"{ROLLOUT_COPY}{name}": t for name, t in self.synced.experts.items()})
            document["rollout_copy_version"] = self.synced.version
        return tensors, document

    def load_training_state(self, policy_dir: str, tensors: dict[str, Tensor], document: dict[str, Any]) -> None:
        """Restores a checkpoint: adapters from ``policy_dir``, then this rank's saved training state."""
        if document["world_size"] != self.world_size or document["rank"] != self.rank:
            raise ValueError(
                f"checkpoint was written by rank {document['rank']} of {document['world_size']} learners; this is "
                f"rank {self.rank} of {self.world_size}: resume with the same learner.num_learners"
            )
        load_policy_weights(self.policy, Path(policy_dir))
        learner_state.restore(self.optimizer, self.scheduler, self.critic, tensors, document)
        self.version = document["version"]
        if self.synced is not None and "rollout_copy_version" in document:
            self.synced.version = document["rollout_copy_version"]
            self.synced.experts = {
                name.removeprefix(ROLLOUT_COPY): t.clone()
                for name, t in tensors.items()
                if name.startswith(ROLLOUT_COPY)
            }
