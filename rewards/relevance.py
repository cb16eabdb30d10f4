"""Relevance: does the reply engage with the situation? Cosine similarity of sentence embeddings.

    relevance(prompt, reply) = cos(e(prompt), e(reply)),   e = mean-pooled, L2-normalised encoder states

with the packaged all-MiniLM-L6-v2 sentence encoder by default (offline, off the shelf, no training). A generic
reply ("Thanks for your message.") or one about something else scores lower than one that takes up the person's
own words and circumstances. Range [-1, 1], in practice about [0, 0.8].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rewards.base import register_reward


@register_reward("relevance")
@dataclass
class Relevance:
    """Options: ``model`` ("minilm" = the packaged encoder, or an HF encoder folder), ``max_length``, ``batch_size``."""

    model: str = "minilm"
    max_length: int = 256
    batch_size: int = 32
    encoder: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from rewards.training import base_model_path

        path = base_model_path(self.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.encoder = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False).eval()

    @torch.no_grad()
    def embed(self, texts: list[str]) -> Tensor:
        """(N, H) unit-norm mean-pooled embeddings."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.encoder(**batch).last_hidden_state  # (b, L, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.encoder.config.hidden_size)

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> list[float]:
        unique = list(dict.fromkeys(prompts))  # G samples share a prompt: embed it once
        prompt_vectors = self.embed(unique)
        index = torch.tensor([unique.index(p) for p in prompts])
        return (prompt_vectors[index] * self.embed(completions)).sum(-1).tolist()
