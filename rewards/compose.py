"""The one reward interface the RL driver calls: a config of weighted terms and the composer that scores a batch.

Legend: B = completions in the batch (prompts x samples).

    rewards = sum_i w_i * s_i  -  sum_j v_j * p_j                                                   (B,)

s_i are the social-emotional component scores (``components``, any sign of weight; penalty-style components such as
dismissiveness take a negative w_i), p_j the safety penalties (``safety``, v_j >= 0, subtracted). Every raw score is
also returned under ``reward/<name>`` or ``safety/<name>`` so the driver logs each one.

Normalisation (``normalize: true``) replaces each s_i by (s_i - mean_i) / (std_i + eps), using per-component running
statistics kept as an exponential moving average over batches (momentum m; history weight m, current batch 1 - m,
combined as a two-part mixture so the variance includes the shift of the mean). The statistics are updated with the
current batch **before** it is normalised, so the first batch is normalised by its own mean and std. EMA rather than
an all-history (Welford) average, because the reward distribution drifts as the policy learns. Safety penalties are
never normalised: a clear-case penalty of v_j must cost v_j whatever the history. ``state_dict()`` /
``load_state_dict()`` save and restore the statistics exactly (Python float64), so a resumed run scores identically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

# Importing a reward module registers its components under their names.
import rewards.judge
import rewards.model
import rewards.relevance
import rewards.remote
import rewards.rules  # noqa: F401
from policies.config import FrozenConfig
from rewards.base import RewardError, RewardFactory, RewardFn, check_reward_options, check_scores, get_reward


class RewardTerm(FrozenConfig):
    """One weighted term: a registered reward factory, its options and its weight."""

    name: str = Field(description="Registered reward name, e.g. validation; unknown names list the registered ones.")
    weight: float = Field(description="w in w * score; under safety, v >= 0 in - v * penalty.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options of the reward's factory, e.g. {min_words: 8} for length."
    )
    key: str | None = Field(
        None, description="Log name (reward/<key>, safety/<key>); default the reward name. Lets a reward appear twice."
    )

    @property
    def label(self) -> str:
        return self.key or self.name

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        get_reward(v)  # ValueError with a did-you-mean and the registered names
        return v

    @model_validator(mode="after")
    def _options_and_weight(self) -> RewardTerm:
        if not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name!r}: weight must be finite, got {self.weight}")
        check_reward_options(self.name, self.options)
        return self


DEFAULT_COMPONENTS = (
    RewardTerm(name="reward_model", key="social_rm", weight=1.0, options={"path": "embedded-social"}),
    RewardTerm(name="relevance", weight=2.0),
    RewardTerm(name="repetition", weight=-1.0),
    RewardTerm(name="length", weight=0.25, options={"min_words": 8, "max_words": 150}),
)
"""The embedded default: the reward model trained at setup on the project's exemplars (rewards/embedded.py), the
reply's relevance to the situation, and two rule terms that keep replies from looping or collapsing."""
DEFAULT_SAFETY = (
    RewardTerm(name="safety_rules", weight=2.0),
    RewardTerm(name="reward_model", key="safety_classifier", weight=2.0, options={"path": "embedded-safety"}),
)
"""On unless a config sets ``safety: []`` explicitly; replacing ``components`` keeps it. The rule layer covers clear
cases (and over-refusal), the classifier (P(unsafe), trained at setup) the rest."""


class RewardsConfig(FrozenConfig):
    """The reward mix of a run: social-emotional components, safety penalties and optional normalisation."""

    components: tuple[RewardTerm, ...] = Field(
        DEFAULT_COMPONENTS,
        description="Social-emotional terms, summed as w * score; give penalty-style ones a negative weight.",
    )
    safety: tuple[RewardTerm, ...] = Field(
        DEFAULT_SAFETY, description="Safety penalty terms, subtracted as v * penalty with v >= 0; never normalised."
    )
    normalize: bool = Field(
        False, description="Standardise each component with its running EMA mean/std (updated first) before weighting."
    )
    norm_momentum: float = Field(
        0.99, gt=0, lt=1, description="EMA momentum m of the running statistics: history weight m, new batch 1 - m."
    )
    norm_eps: float = Field(1e-6, gt=0, description="Added to the running std before dividing.")

    @model_validator(mode="after")
    def _unique_and_signed(self) -> RewardsConfig:
        for group in ("components", "safety"):
            names = [t.label for t in getattr(self, group)]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{group}: {repeated} listed more than once; merge them or give each its own key")
        negative = [t.name for t in self.safety if t.weight < 0]
        if negative:
            raise ValueError(f"safety: weights of {negative} are negative; safety weights are penalties, set them >= 0")
        return self


@dataclass(frozen=True)
class ExtraReward:
    """A component given in Python rather than by registered name, e.g. a TRL-style reward function."""

    name: str  # logged as reward/<name> or safety/<name>
    fn: RewardFn  # fn(prompts=..., completions=..., **metadata) -> B floats
    weight: float  # w (components) or v >= 0 (safety)


@dataclass(frozen=True)
class ComposedRewards:
    """What one composer call returns: the total reward per completion and every raw score, for logging."""

    rewards: Tensor  # (B,) float32: sum_i w_i * s_i - sum_j v_j * p_j (s_i normalised if configured)
    components: dict[str, Tensor]  # "reward/<name>" / "safety/<name>" -> (B,) float32 raw score, before normalisation


class RunningMoments:
    """EMA mean and variance of a stream of score batches, in float64 (see the module docstring)."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.mean, self.var, self.batches = 0.0, 0.0, 0

    def update(self, scores: Tensor) -> None:
        """Folds one batch (B,) into the statistics; an empty batch changes nothing."""
        if scores.numel() == 0:
            return
        x = scores.double()
        batch_mean, batch_var = x.mean().item(), x.var(unbiased=False).item()
        if self.batches == 0:
            self.mean, self.var = batch_mean, batch_var
        else:
            m, delta = self.momentum, batch_mean - self.mean
            self.mean += (1.0 - m) * delta
            self.var = m * self.var + (1.0 - m) * batch_var + m * (1.0 - m) * delta**2
        self.batches += 1

    def normalize(self, scores: Tensor, eps: float) -> Tensor:
        """(scores - mean) / (std + eps), (B,) -> (B,) float32."""
        return ((scores.double() - self.mean) / (math.sqrt(self.var) + eps)).float()

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "var": self.var, "batches": self.batches}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.mean, self.var, self.batches = float(state["mean"]), float(state["var"]), int(state["batches"])


@dataclass(frozen=True)
class _Term:
    key: str  # reward/<name> or safety/<name>
    fn: RewardFn
    weight: float
    is_penalty: bool


def resolve_factories(config: RewardsConfig) -> dict[str, RewardFactory]:
    """The registered factory of every term, by name, for a composer built in another process (the Ray reward
    actor): a factory defined in a script (``__main__``) or inside a function travels by value, so its registration
    need not happen there; one defined in an importable module travels by name, so that module must be importable
    on the actor's node (``ray job submit --working-dir`` ships the project)."""
    return {term.name: get_reward(term.name) for term in (*config.components, *config.safety)}


def preflight(config: RewardsConfig) -> None:
    """Runs each term's cheap checks, where its factory has a ``preflight(**options)`` (a missing model folder, a
    rubric file), so a bad path fails before a job starts Ray or loads any model; ValueError naming the term."""
    for group in ("components", "safety"):
        for index, term in enumerate(getattr(config, group)):
            try:
                check_term(term.name, term.options)
            except (OSError, ValueError) as exc:
                raise ValueError(f"rewards.{group}[{index}] ({term.label}): {exc}") from exc


def check_term(name: str, options: Mapping[str, Any]) -> None:
    """One reward's cheap checks: a registered name, and its factory's ``preflight(**options)`` where it has one."""
    check = getattr(get_reward(name), "preflight", None)
    if check is not None:
        check(**options)


def _build(term: RewardTerm, factories: Mapping[str, RewardFactory]) -> RewardFn:
    """Calls the term's factory with its options; a bad option value is a ValueError naming the reward."""
    try:
        factory = factories[term.name] if term.name in factories else get_reward(term.name)
        return factory(**term.options)
    except Exception as exc:
        raise ValueError(f"reward {term.name!r} with options {term.options}: {exc}") from exc


class RewardComposer:
    """Scores a batch with every configured term; ``composer(prompts, completions, **metadata) -> ComposedRewards``.

    ``extra_components`` / ``extra_safety`` add Python callables (TRL-style reward functions) next to the config's
    terms. ``factories`` (``resolve_factories``) stand in for the registry's by name. Factories are built once,
    here. Any component that raises or returns unusable scores raises RewardError naming it, before any running
    statistic changes.
    """

    def __init__(
        self,
        config: RewardsConfig,
        extra_components: Sequence[ExtraReward] = (),
        extra_safety: Sequence[ExtraReward] = (),
        factories: Mapping[str, RewardFactory] | None = None,
    ) -> None:
        self.config = config
        factories = factories or {}
        terms = [_Term(f"reward/{t.label}", _build(t, factories), t.weight, False) for t in config.components]
        terms += [_Term(f"safety/{t.label}", _build(t, factories), t.weight, True) for t in config.safety]
        for extras, is_penalty in ((extra_components, False), (extra_safety, True)):
            for extra in extras:
                terms.append(_extra_term(extra, is_penalty))
        keys = [t.key for t in terms]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"reward terms {repeated} are defined twice (config and extra); rename the extra one")
        if not terms:
            raise ValueError("no reward terms: add at least one entry to components (or pass extra_components)")
        self._terms: tuple[_Term, ...] = tuple(terms)
        self._moments = {
            t.key: RunningMoments(config.norm_momentum) for t in terms if config.normalize and not t.is_penalty
        }

    @property
    def keys(self) -> tuple[str, ...]:
        """The ``components`` keys every call returns, in order."""
        return tuple(t.key for t in self._terms)

    @property
    def functions(self) -> dict[str, RewardFn]:
        """Each term's component by key (for benchmarks and debugging: unweighted, unchecked)."""
        return {t.key: t.fn for t in self._terms}

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], *, training: bool = True, **metadata: Any
    ) -> ComposedRewards:
        """``training=False`` (evaluations): the weighted sum of the raw scores, without normalisation and without
        touching its running statistics, so evaluations compare across steps and change nothing later steps see."""
        B = len(completions)
        _check_batch(prompts, B, metadata)
        raw = {t.key: _score(t, prompts, completions, metadata, B) for t in self._terms}  # key -> (B,)
        total = torch.zeros(B, dtype=torch.float32)  # (B,)
        for t in self._terms:
            scores = raw[t.key]
            if t.key in self._moments and training:
                self._moments[t.key].update(scores)
                scores = self._moments[t.key].normalize(scores, self.config.norm_eps)
            total += (-t.weight if t.is_penalty else t.weight) * scores
        return ComposedRewards(rewards=total, components=raw)

    def state_dict(self) -> dict[str, dict[str, float | int]]:
        """Running statistics per normalised component key (empty when normalize is off)."""
        return {key: moments.state_dict() for key, moments in self._moments.items()}

    def load_state_dict(self, state: dict[str, dict[str, float | int]]) -> None:
        """Restores ``state_dict()``; ValueError if its keys are not exactly this composer's normalised components."""
        missing, unexpected = sorted(self._moments.keys() - state.keys()), sorted(state.keys() - self._moments.keys())
        if missing or unexpected:
            mismatch = f"missing {missing}, unexpected {unexpected}"
            raise ValueError(f"reward normaliser state does not match the config: {mismatch}")
        for key, moments in self._moments.items():
            moments.load_state_dict(state[key])


def _extra_term(extra: ExtraReward, is_penalty: bool) -> _Term:
    prefix = "safety" if is_penalty else "reward"
    if not extra.name or not callable(extra.fn):
        raise ValueError(f"extra {prefix} term {extra!r} needs a non-empty name and a callable fn")
    if not math.isfinite(extra.weight) or (is_penalty and extra.weight < 0):
        rule = "finite and >= 0" if is_penalty else "finite"
        raise ValueError(f"extra {prefix} term {extra.name!r}: weight {extra.weight} must be {rule}")
    return _Term(f"{prefix}/{extra.name}", extra.fn, extra.weight, is_penalty)


def _check_batch(prompts: Sequence[str], batch_size: int, metadata: dict[str, Any]) -> None:
    """Prompts and every metadata list must have one entry per completion."""
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for {batch_size} completions; pass one prompt per completion")
    for key, values in metadata.items():
        if isinstance(values, str) or not hasattr(values, "__len__") or len(values) != batch_size:
            raise ValueError(f"metadata {key!r} must be a list of {batch_size} values (one per completion)")


def _score(term: _Term, prompts: Sequence[str], completions: Sequence[str], metadata: dict[str, Any], B: int) -> Tensor:
    """One term's checked raw scores (B,); RewardError naming the term if it raises or returns bad values."""
    try:
        scores = term.fn(prompts=list(prompts), completions=list(completions), **metadata)
    except Exception as exc:
        raise RewardError(f"reward component {term.key!r} raised {type(exc).__name__}: {exc}") from exc
    return check_scores(term.key, scores, B)


DEFAULT_REWARDS = RewardsConfig()
"""The embedded default (DEFAULT_COMPONENTS and DEFAULT_SAFETY); needs the embedded reward models from setup."""
