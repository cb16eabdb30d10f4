"""Adapter-only weight sync: learners publish expert + router tensors with a version; rollouts refuse stale ones.

Only the LoRA experts and the router travel (through the Ray object store, so it works across nodes); the frozen
base never moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policies.policy import PersonaFusePolicy


class StaleWeightsError(RuntimeError):
    """A rollout was asked to use, or to load, weights older than the ones it has."""


@dataclass(frozen=True)
class AdapterState:
    version: int  # learner optimizer steps taken when the snapshot was made
    experts: dict[str, tuple[Tensor, Tensor]]  # module path -> (A (E, r, d_in), B (E, d_out, r)), on CPU
    router: dict[str, Tensor]  # router state dict, on CPU

    @property
    def nbytes(self) -> int:
        tensors = [t for pair in self.experts.values() for t in pair] + list(self.router.values())
        return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def snapshot(policy: PersonaFusePolicy, version: int, dtype: torch.dtype | None = None) -> AdapterState:
    """Detached CPU copies of the trainable adapter tensors; ``dtype`` (e.g. bf16) halves what travels, at the
    cost of rounding the rollout's copy (the learner keeps full precision; the loss uses the learner's pi_old)."""
    experts = {
        path: (layer.lora_A.detach().to("cpu", dtype).clone(), layer.lora_B.detach().to("cpu", dtype).clone())
        for path, layer in policy.mixture_layers.items()
    }
    router = {k: v.detach().cpu().clone() for k, v in policy.router.state_dict().items()}
    return AdapterState(version, experts, router)


@torch.no_grad()
def load_snapshot(policy: PersonaFusePolicy, state: AdapterState) -> None:
    """Copies a snapshot into a policy with the same architecture; a missing layer is an error."""
    if set(state.experts) != set(policy.mixture_layers):
        raise ValueError("adapter snapshot and policy have different mixture layers; same config on both sides?")
    for path, (a, b) in state.experts.items():
        layer = policy.mixture_layers[path]
        layer.lora_A.copy_(a)
        layer.lora_B.copy_(b)
    policy.router.load_state_dict(state.router, strict=True)
