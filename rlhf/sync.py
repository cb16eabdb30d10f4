"""Adapter-only weight sync: learners publish expert + router tensors with a version; rollouts refuse stale ones.

Only the LoRA experts and the router travel (through the Ray object store, so it works across nodes); the frozen
base never moves. After a learner's first, complete snapshot, only what RL trains travels: with
``policy.train_lora_a: false`` (LoRA-FA) the experts' A matrices stay where the run started, and each sync carries
the B matrices and the router (about half the bytes).

With ``rollout.sync_delta`` set (int8 or int4), each sync after the first carries the trained experts as a
quantised difference from what the rollouts already hold, with error feedback: learner and rollouts both keep
``SyncedAdapters``, the same fp32 copy rebuilt from the same bytes, and the learner encodes the next difference
against it. The rounding error of one sync is part of the next difference, so after each sync the rollouts' fp32
copy is within half a quantisation step of the learner's weights (max|difference sent| / 254 per group of 128 for
int8, / 14 for int4) and the error never accumulates. (An engine that computes in bf16 rounds that copy again.)
A group whose difference is exactly zero (an expert no batch has been routed to yet) costs one bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from policies.policy import PersonaFusePolicy


class StaleWeightsError(RuntimeError):
    """A rollout was asked to use, or to load, weights older than the ones it has."""


DELTA_BITS = {"int8": 8, "int4": 4}  # rollout.sync_delta -> bits per value
DELTA_GROUP = 128  # elements per quantisation scale: 4 bytes of scale per 128 values (3% on int8)


@dataclass(frozen=True)
class QuantizedDelta:
    """A tensor difference in groups of ``DELTA_GROUP`` consecutive elements, each group as signed integers times
    one fp32 scale: int8 in [-127, 127], or int4 in [-7, 7] packed two per byte. Groups whose difference is exactly
    zero are not sent: with top-k routing an update trains only the experts its batch was routed to, and Adam
    without weight decay leaves an expert that never had a gradient exactly where it was."""

    codes: Tensor  # int8 (sent groups, 128), or uint8 (sent groups, 64) holding two int4 codes each
    scales: Tensor  # fp32 (sent groups,)
    shape: tuple[int, ...]
    bits: int
    sent: Tensor | None = None  # which groups were sent, one bit each (packed uint8); None = all of them

    @property
    def nbytes(self) -> int:
        parts = (self.codes, self.scales) if self.sent is None else (self.codes, self.scales, self.sent)
        return sum(t.numel() * t.element_size() for t in parts)

    def decode(self) -> Tensor:
        """codes * scale, fp32, in the original shape (0 in the groups not sent)."""
        codes = self.codes.to(torch.int16)
        if self.bits == 4:  # low nibble first; stored with +8 so both nibbles are unsigned
            codes = torch.stack((codes & 0xF, codes >> 4), dim=-1).flatten(-2) - 8
        values = codes.float() * self.scales[:, None]
        numel = _numel(self.shape)
        if self.sent is not None:
            every = values.new_zeros(-(-numel // DELTA_GROUP), DELTA_GROUP)
            every[unpack_bits(self.sent, len(every))] = values
            values = every
        return values.flatten()[:numel].view(self.shape)


def _numel(shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel())


_BIT_VALUES = 2 ** torch.arange(8, dtype=torch.int32)


def pack_bits(mask: Tensor) -> Tensor:
    """bool (n,) -> uint8 (ceil(n / 8),): element i is bit i % 8 of byte i // 8."""
    padded = F.pad(mask.to(torch.int32), (0, (-mask.numel()) % 8)).view(-1, 8)
    return (padded * _BIT_VALUES.to(padded.device)).sum(1).to(torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """``pack_bits``'s inverse: the first ``n`` bits as bool (n,)."""
    return ((packed.to(torch.int32)[:, None] // _BIT_VALUES.to(packed.device)) % 2).flatten()[:n].bool()


def quantize_delta(delta: Tensor, bits: int, name: str = "delta") -> QuantizedDelta:
    """Symmetric per-group quantisation: scale_g = max_i |d_gi| / L with L = 2^(bits-1) - 1 (127 or 7), and
    q_gi = round(d_gi / scale_g), so |q_gi * scale_g - d_gi| <= scale_g / 2. A non-finite difference (the learner's
    weights went NaN or inf) is an error naming the tensor, never a silently zeroed group."""
    if bits not in (4, 8):
        raise ValueError(f"delta bits must be 4 or 8, not {bits}")
    flat = delta.detach().float().flatten()
    if not torch.isfinite(flat).all():
        raise ValueError(f"adapter sync: {name} is not finite (NaN or inf in the learner's weights)")
    groups = F.pad(flat, (0, (-flat.numel()) % DELTA_GROUP)).view(-1, DELTA_GROUP)
    levels = 2 ** (bits - 1) - 1
    scales = groups.abs().amax(dim=1) / levels
    nonzero = scales > 0
    sent = None if bool(nonzero.all()) else pack_bits(nonzero)
    if sent is not None:  # an all-zero group decodes to zeros without being sent
        groups, scales = groups[nonzero], scales[nonzero]
    codes = torch.round(groups / scales[:, None]).clamp_(-levels, levels)
    if bits == 8:
        return QuantizedDelta(codes.to(torch.int8), scales, tuple(delta.shape), bits, sent)
    nibbles = (codes + 8).to(torch.uint8).view(len(groups), DELTA_GROUP // 2, 2)
    return QuantizedDelta(nibbles[..., 0] | (nibbles[..., 1] << 4), scales, tuple(delta.shape), bits, sent)


@dataclass(frozen=True)
class AdapterState:
    version: int  # learner optimizer steps taken when the snapshot was made
    tensors: dict[str, Tensor]  # "<mixture layer>.lora_A" (E, r, d_in), ".lora_B" (E, d_out, r), "router.<key>"
    complete: bool  # every adapter tensor, not only the trained ones
    deltas: dict[str, QuantizedDelta] = field(default_factory=dict)  # expert tensors sent as differences
    base_version: int | None = None  # the version the deltas apply to

    @property
    def nbytes(self) -> int:
        full = sum(t.numel() * t.element_size() for t in self.tensors.values())
        return full + sum(d.nbytes for d in self.deltas.values())


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


class SyncedAdapters:
    """The expert tensors the rollouts hold (fp32), rebuilt from the syncs they received. The learner keeps one to
    encode each difference against; every rollout keeps one to decode into. Both apply the same fp32 arithmetic to
    the same bytes, so they agree bit for bit."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.experts: dict[str, Tensor] = {}

    @torch.no_grad()
    def resolve(self, state: AdapterState) -> AdapterState:
        """The sync with every delta resolved into its full tensor (new tensors; this copy is left as it was, so a
        sync that fails to load changes nothing). A delta must apply to exactly the version held: one missed or
        reordered sync would corrupt the copy."""
        if state.deltas and state.base_version != self.version:
            raise StaleWeightsError(
                f"adapter sync: deltas from v{state.base_version}, but this copy holds v{self.version}"
            )
        resolved = {}
        for name, delta in state.deltas.items():
            held = self.experts.get(name)
            if held is None:
                raise ValueError(f"adapter sync: a delta for {name}, which no earlier sync carried")
            if tuple(held.shape) != delta.shape:
                raise ValueError(f"adapter sync: {name} delta has shape {delta.shape}, the copy {tuple(held.shape)}")
            resolved[name] = held + delta.decode()
        return AdapterState(state.version, {**state.tensors, **resolved}, state.complete)

    def commit(self, resolved: AdapterState) -> None:
        """Makes a resolved sync (``resolve``'s result, loaded) what this copy holds."""
        if resolved.complete:
            self.experts = {}
        for name, tensor in resolved.tensors.items():
            if ".lora_" in name:
                self.experts[name] = tensor.to(torch.float32, copy=True)
        self.version = resolved.version

    def apply(self, state: AdapterState) -> AdapterState:
        """``resolve`` then ``commit``: takes in one sync, returns it resolved."""
        resolved = self.resolve(state)
        self.commit(resolved)
        return resolved


def held_snapshot(policy: PersonaFusePolicy, synced: SyncedAdapters) -> AdapterState:
    """A complete snapshot of what the rollouts held (``synced``'s experts in fp32, the policy's router, which
    always travels whole): a resumed run re-sends it so its rollouts sample as the uninterrupted run's did."""
    tensors = {}
    for name, tensor in adapter_tensors(policy).items():
        held = synced.experts[name] if ".lora_" in name else tensor.detach().to("cpu")
        tensors[name] = held.clone()
    return AdapterState(synced.version, tensors, complete=True)


@torch.no_grad()
def delta_snapshot(policy: PersonaFusePolicy, version: int, synced: SyncedAdapters, bits: int) -> AdapterState:
    """The trained tensors for a rollout holding ``synced``: each expert tensor as a quantised difference from
    its copy there (error feedback: what one sync rounds away, the next sends), the router as it is."""
    tensors, deltas = {}, {}
    for name, tensor in adapter_tensors(policy).items():
        if not tensor.requires_grad:
            continue
        if ".lora_" in name:
            deltas[name] = quantize_delta(tensor.detach().to("cpu", torch.float32) - synced.experts[name], bits, name)
        else:
            tensors[name] = tensor.detach().to("cpu").clone()
    return AdapterState(version, tensors, complete=False, deltas=deltas, base_version=synced.version)


@torch.no_grad()
def load_snapshot(policy: PersonaFusePolicy, state: AdapterState) -> None:
    """Copies a snapshot into a policy with the same architecture. A complete snapshot must name every adapter
    tensor; a partial one only ones the policy has."""
    if state.deltas:
        raise ValueError("adapter snapshot carries deltas: resolve them with SyncedAdapters.apply first")
    own = adapter_tensors(policy)
    unknown = sorted(set(state.tensors) - set(own))
    missing = sorted(set(own) - set(state.tensors)) if state.complete else []
    if unknown or missing:
        raise ValueError(
            f"adapter snapshot does not fit this policy (unknown {unknown[:3]}, missing {missing[:3]}); "
            "same policy config on learners and rollouts?"
        )
    for name, tensor in state.tensors.items():  # every check before any copy: a refused snapshot changes nothing
        if tensor.shape != own[name].shape:
            raise ValueError(
                f"adapter snapshot: {name} has shape {tuple(tensor.shape)}, the policy's is "
                f"{tuple(own[name].shape)}; same policy config on learners and rollouts?"
            )
    for name, tensor in state.tensors.items():
        own[name].copy_(tensor)
