"""Adapter-only weight sync: learners publish expert + router tensors with a version; rollouts refuse stale ones.

Only the LoRA experts and the router travel (through the Ray object store, so it works across nodes); the frozen
base never moves. After a learner's first, complete snapshot, only what RL trains travels: with
``policy.train_lora_a: false`` (LoRA-FA) the experts' A matrices stay where the run started, and each sync carries
the B matrices and the router (about half the bytes).
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
    tensors: dict[str, Tensor]  # "<mixture layer>.lora_A" (E, r, d_in), ".lora_B" (E, d_out, r), "router.<key>"
    complete: bool  # every adapter tensor, not only the trained ones

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def adapter_tensors(policy: PersonaFusePolicy) -> dict[str, Tensor]:
    """The policy's live adapter tensors by sync name: every expert's A and B, and the router's state."""
    tensors = {}
    for path, layer in policy.mixture_layers.items():
        tensors[f"{path}.lora_A"] = layer.lora_A
        tensors[f"{path}.lora_B"] = layer.lora_B
    tensors.update({f"router.{key}": value for key, value in policy.router.state_dict(keep_vars=True).items()})
    return tensors


@torch.no_grad()
def snapshot(
    policy: PersonaFusePolicy, version: int, dtype: torch.dtype | None = None, trained_only: bool = False
) -> AdapterState:
    """Detached CPU copies of the adapter tensors. ``dtype`` (e.g. bf16) halves what the experts send, at the cost
    of rounding the rollout's copy (the learner keeps full precision; the loss uses the learner's pi_old).
    ``trained_only`` keeps the tensors that require grad: the rest cannot have changed since a complete snapshot."""
    tensors = {}
    for name, tensor in adapter_tensors(policy).items():
        if trained_only and not tensor.requires_grad:
            continue
        cast = dtype if ".lora_" in name else None  # the small router stays in its own precision
        tensors[name] = tensor.detach().to("cpu", cast).clone()
    return AdapterState(version, tensors, complete=not trained_only)


@torch.no_grad()
def load_snapshot(policy: PersonaFusePolicy, state: AdapterState) -> None:
    """Copies a snapshot into a policy with the same architecture. A complete snapshot must name every adapter
    tensor; a partial one only ones the policy has."""
    own = adapter_tensors(policy)
    unknown = sorted(set(state.tensors) - set(own))
    missing = sorted(set(own) - set(state.tensors)) if state.complete else []
    if unknown or missing:
        raise ValueError(
            f"adapter snapshot does not fit this policy (unknown {unknown[:3]}, missing {missing[:3]}); "
            "same policy config on learners and rollouts?"
        )
    for name, tensor in state.tensors.items():
        if tensor.shape != own[name].shape:
            raise ValueError(
                f"adapter snapshot: {name} has shape {tuple(tensor.shape)}, the policy's is "
                f"{tuple(own[name].shape)}; same policy config on learners and rollouts?"
            )
        own[name].copy_(tensor)
