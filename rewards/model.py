"""Trained reward models as reward components: an HF sequence classifier (encoder or causal LM) with one scalar
head, or several heads (one per social-emotional dimension) combined by configured weights.

Legend: B = completions, K = heads.

A reward-model folder is a standard HF folder (``config.json`` + ``model.safetensors`` + tokenizer): ``num_labels``
heads named by ``id2label`` (e.g. ``{0: "empathy", 1: "appropriateness"}``). Heads trained with a sigmoid loss
(``problem_type == "multi_label_classification"``: the safety classifier, soft labels in [0, 1]) are scored as
probabilities; others as raw logits. Loading is safetensors only and never runs remote code.

Text layout, shared by training and scoring so they always agree: ``prompt`` and ``completion`` are encoded as a
text pair (``[CLS] prompt [SEP] completion [SEP]`` for BERT-style encoders; prompt then completion for causal
LMs), truncated longest-first to ``max_length`` tokens, without token type ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rewards.base import register_reward

EMBEDDED_REWARD_MODELS = ("embedded-social", "embedded-safety")


def embedded_reward_dir(name: str) -> Path:
    """Folder of an embedded reward model trained at setup from the project's exemplars (rewards/embedded.py)."""
    home = Path(os.environ.get("PERSONAFUSE_HOME", Path.home() / ".cache" / "personafuse"))
    return home / "reward_models" / name.removeprefix("embedded-")


def resolve_reward_path(path: str) -> Path:
    folder = embedded_reward_dir(path) if path in EMBEDDED_REWARD_MODELS else Path(path)
    if not (folder / "config.json").is_file():
        hint = " (run `make setup`, which trains the embedded reward models)" if path in EMBEDDED_REWARD_MODELS else ""
        raise FileNotFoundError(f"reward model {path!r}: no HF model folder at {folder}{hint}")
    return folder


def tokenize_pairs(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> list[list[int]]:
    """Token ids of (prompt, completion) text pairs, unpadded; see the module docstring for the layout."""
    return tokenizer(prompts, completions, truncation="longest_first", max_length=max_length)["input_ids"]


def encode_pairs(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> dict[str, Tensor]:
    """``tokenize_pairs`` padded into (B, L) input_ids and attention_mask tensors."""
    padded = tokenizer.pad(
        {"input_ids": tokenize_pairs(tokenizer, prompts, completions, max_length)}, return_tensors="pt"
    )
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}


def load_reward_model(folder: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a reward-model folder: safetensors only, no remote code, eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=dtype, use_safetensors=True, trust_remote_code=False
    ).eval()
    if tokenizer.pad_token is None:  # causal LMs: pad with EOS; the classifier reads the last non-pad token
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@register_reward("reward_model")
@dataclass
class RewardModel:
    """Scores each (prompt, completion) with a trained reward model; several heads are combined as sum_k w_k * s_k.

    Options: ``path`` (an HF folder, or "embedded-social" / "embedded-safety" for the models trained at setup),
    ``head_weights`` ({head name: weight}; default: the single head, or equal weights summing to 1),
    ``batch_size``, ``max_length`` (tokens of prompt + completion; longer pairs are truncated longest-first).
    """

    path: str = "embedded-social"
    head_weights: dict[str, float] | None = None
    batch_size: int = 16
    max_length: int = 256
    heads: tuple[str, ...] = field(init=False)
    weights: Tensor = field(init=False, repr=False)

    @classmethod
    def preflight(cls, path: str = "embedded-social", **_: object) -> None:
        """The checks that load nothing (``rewards.compose.preflight``): the model folder exists."""
        resolve_reward_path(path)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_length < 8:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 8, got {self.batch_size}, {self.max_length}")
        self.folder = resolve_reward_path(self.path)
        self.model, self.tokenizer = load_reward_model(self.folder)
        config = self.model.config
        self.heads = tuple(config.id2label[i] for i in range(config.num_labels))
        self.sigmoid = config.problem_type == "multi_label_classification"
        weights = self.head_weights or {h: 1.0 / len(self.heads) for h in self.heads}
        unknown = sorted(set(weights) - set(self.heads))
        if unknown:
            raise ValueError(f"head_weights names {unknown}; {self.folder} has heads {list(self.heads)}")
        self.weights = torch.tensor([float(weights.get(h, 0.0)) for h in self.heads])  # (K,)

    @torch.no_grad()
    def head_scores(self, prompts: list[str], completions: list[str]) -> Tensor:
        """(B, K) per-head scores (probabilities for sigmoid-trained heads, else logits)."""
        out = []
        for i in range(0, len(completions), self.batch_size):
            batch = encode_pairs(
                self.tokenizer, prompts[i : i + self.batch_size], completions[i : i + self.batch_size], self.max_length
            )
            logits = self.model(**batch).logits.float()  # (b, K)
            out.append(torch.sigmoid(logits) if self.sigmoid else logits)
        return torch.cat(out) if out else torch.zeros(0, len(self.heads))

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> list[float]:
        return (self.head_scores(prompts, completions) @ self.weights).tolist()
