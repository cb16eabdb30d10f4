"""The typed rollout batch that flows through one RL step. Stages fill their fields; none tests for presence.

Legend: B = sequences (prompts x samples), P = prompt tokens (left-padded), T = response tokens (right-padded),
G = samples per prompt, E = persona experts.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    # trajectory (rollout)
    prompt_ids: Tensor  # (B, P) left-padded prompt tokens
    prompt_mask: Tensor  # (B, P)
    response_ids: Tensor  # (B, T) right-padded sampled tokens
    response_mask: Tensor  # (B, T) 1 = sampled token (EOS included), 0 = padding
    group_ids: Tensor  # (B,) index of the prompt a sample answers; the G samples of a prompt share it
    # persona / routing (rollout)
    routing_weights: Tensor  # (B, E) mixture weights the sample was generated with
    # per-policy log-probs
    rollout_logprobs: Tensor  # (B, T) log pi of each sampled token, as the engine computed it
    truncated: Tensor  # (B,) bool: the reply reached rollout.max_new_tokens without ending (cut off)
    situation_features: Tensor | None = None  # (B, d) what the router read for the prompt (driver, from the route)
    old_logprobs: Tensor | None = None  # (B, T) learner's log pi_old (before this step's updates)
    ref_logprobs: Tensor | None = None  # (B, T) log pi_ref: the base with adapters off
    values: Tensor | None = None  # (B, T) PPO critic values
    # rewards and advantages (driver)
    rewards: Tensor | None = None  # (B,) composed sequence reward
    token_rewards: Tensor | None = None  # (B, T) per-token reward (KL-shaped when kl placement = reward)
    advantages: Tensor | None = None  # (B, T)
    returns: Tensor | None = None  # (B, T)
    # metadata
    prompts: list[str] = field(default_factory=list)  # (B,) the last user message (the situation), as rewards see it
    completions: list[str] = field(default_factory=list)  # (B,) decoded replies
    categories: list[str | None] = field(default_factory=list)  # (B,) situation category of the prompt

    @property
    def input_ids(self) -> Tensor:  # (B, P+T)
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:  # (B, P+T)
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_len(self) -> int:
        return self.response_ids.shape[1]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, index: Tensor | slice) -> RolloutBatch:
        """Rows ``index`` of every tensor and list field (for learner shards and minibatches)."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                picked[f.name] = value[index]
            elif isinstance(value, list) and value:
                picked[f.name] = [value[i] for i in index.tolist()]
        return replace(self, **picked)

    def trimmed(self) -> RolloutBatch:
        """The same rows without the columns that are padding in every row: prompt columns on the left, response
        columns on the right. A micro-batch then costs what its own longest prompt and reply cost, not the whole
        batch's; masked columns change no unmasked position (positions come from the mask)."""
        prompt_width = max(int(self.prompt_mask.sum(-1).max()), 1)
        response_width = max(int(self.response_mask.sum(-1).max()), 1)
        cut = {}
        for name in PROMPT_FIELDS:
            cut[name] = getattr(self, name)[:, self.prompt_ids.shape[1] - prompt_width :]
        for name in RESPONSE_FIELDS:
            if (value := getattr(self, name)) is not None:
                cut[name] = value[:, :response_width]
        return replace(self, **cut)

    def to(self, device: torch.device | str) -> RolloutBatch:
        """Every tensor field on ``device`` (learners on GPUs get batches from Ray on the CPU)."""
        moved = {f.name: v.to(device) for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return replace(self, **moved)

    def state(self) -> tuple[dict[str, Tensor], dict[str, list]]:
        """(tensor fields, list fields) for a checkpoint (safetensors + JSON); fields that are None are left out."""
        tensors, lists = {}, {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                tensors[f.name] = value.contiguous()
            elif isinstance(value, list):
                lists[f.name] = value
        return tensors, lists

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], lists: dict[str, list]) -> RolloutBatch:
        """``state``'s inverse."""
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(tensors) - set(lists))
        if missing:  # e.g. a batch saved before the field existed
            raise ValueError(f"the saved rollout batch lacks {missing}: it was written by an older version")
        return cls(**tensors, **lists)

    def shards(self, n: int) -> list[RolloutBatch]:
        """n contiguous, equal shards (the config guarantees divisibility)."""
        size = len(self) // n
        return [self.select(slice(i * size, (i + 1) * size)) for i in range(n)]


PROMPT_FIELDS = ("prompt_ids", "prompt_mask")  # (B, P): padded on the left
RESPONSE_FIELDS = (  # (B, T): padded on the right
    "response_ids", "response_mask", "rollout_logprobs", "old_logprobs", "ref_logprobs", "values",
    "token_rewards", "advantages", "returns",
)  # fmt: skip


def pad_right(rows: list[list[int]] | list[list[float]], value: float, dtype: torch.dtype) -> Tensor:
    """Stacks ragged rows into (N, max_len), padding on the right."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def concat(batches: list[RolloutBatch]) -> RolloutBatch:
    """Joins batches row-wise, re-padding prompts on the left and responses on the right."""
    prompt_width = max(b.prompt_ids.shape[1] for b in batches)
    response_width = max(b.response_len for b in batches)

    def pad(t: Tensor, width: int, left: bool, value: float) -> Tensor:
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

    merged = {}
    for f in fields(RolloutBatch):
        values = [getattr(b, f.name) for b in batches]
        if values[0] is None:
            continue
        if isinstance(values[0], list):
            merged[f.name] = [x for v in values for x in v]
        elif f.name in PROMPT_FIELDS:
            merged[f.name] = torch.cat([pad(v, prompt_width, True, 0) for v in values])
        elif f.name in RESPONSE_FIELDS:
            merged[f.name] = torch.cat([pad(v, response_width, False, 0) for v in values])
        else:
            merged[f.name] = torch.cat(values)
    return RolloutBatch(**merged)
