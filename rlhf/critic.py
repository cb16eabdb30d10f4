"""The PPO critic: a small value head on the policy forward's final hidden states.

It reads the hidden states the actor's forward already computed (no second forward, no second model) and they are
detached, so the value loss trains only the head and never moves the persona experts or the router. The last
layer starts at zero: V = 0 everywhere at step 0, i.e. GAE starts as plain discounted returns.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ValueHead(nn.Module):
    """V(s_t) = w2 . tanh(W1 LayerNorm(h_t) + b1) + b2, for every position t. hidden (B, T, H) -> values (B, T)."""

    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.inner = nn.Linear(hidden_size, inner_size)
        self.out = nn.Linear(inner_size, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        features = self.norm(hidden.detach().to(self.out.weight.dtype))  # (B, T, H); the actor gets no gradient
        return self.out(torch.tanh(self.inner(features))).squeeze(-1).float()  # (B, T)
