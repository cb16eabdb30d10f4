"""The grouped LoRA matmuls give exactly vLLM's own torch_ops results (the functions they replace on CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.ops.torch_ops import lora_ops as vllm_ops
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from rlhf import vllm_cpu_lora as ours

L, R, D_IN, D_OUT = 4, 16, 24, 40
# vLLM's own implementations, captured at collection, before any test calls install() (which swaps them out).
VLLM = SimpleNamespace(
    bgmv_shrink=vllm_ops.bgmv_shrink, bgmv_expand=vllm_ops.bgmv_expand,
    bgmv_expand_slice=vllm_ops.bgmv_expand_slice, add_lora_linear=PunicaWrapperCPU.add_lora_linear,
)  # fmt: skip
assert VLLM.add_lora_linear is not ours.add_lora_linear, "install() ran before this module was collected"


@pytest.mark.parametrize("rows", [1, 16, 300], ids=["one", "decode", "prefill"])
@pytest.mark.parametrize("mixed", [True, False], ids=["several-adapters", "one-adapter"])
def test_same_results_as_vllm(rows: int, mixed: bool) -> None:
    torch.manual_seed(rows)
    x = torch.randn(rows, D_IN)
    a, b = torch.randn(L, 1, R, D_IN), torch.randn(L, 1, D_OUT, R)  # vLLM's stacked (slots, 1, out, in) buffers
    idx = torch.randint(0, L, (rows,)) if mixed else torch.full((rows,), 2)
    shrunk = {}
    for name, impl in (("vllm", VLLM), ("ours", ours)):
        h = torch.zeros(rows, R)
        impl.bgmv_shrink(x, a, h, idx, 0.5)
        y = torch.ones(rows, D_OUT)
        impl.bgmv_expand(h, b, y, idx, add_inputs=True)
        z = torch.ones(rows, D_OUT + 8)
        impl.bgmv_expand_slice(h, b, z, idx, 4, D_OUT, add_inputs=False)
        shrunk[name] = (h, y, z)
    for mine, theirs in zip(shrunk["ours"], shrunk["vllm"], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert shrunk["ours"][1].abs().max() > 1  # a real delta was added


@pytest.mark.parametrize("rows", [3, 100])
def test_rows_without_adapter_get_no_delta(rows: int) -> None:
    x, w = torch.randn(rows, D_IN), torch.randn(L, R, D_IN)
    idx = torch.tensor([1, -1, 3] * (rows // 3) + [1] * (rows % 3))
    out = ours.grouped_lora_matmul(x, w, idx, torch.float32)
    assert torch.equal(out[idx < 0], torch.zeros(int((idx < 0).sum()), R))
    torch.testing.assert_close(out[idx == 3], x[idx == 3] @ w[3].T)


def test_install_replaces_the_cpu_path() -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    ours.install()
    assert punica_cpu.bgmv_shrink is ours.bgmv_shrink and vllm_ops.bgmv_expand_slice is ours.bgmv_expand_slice
    assert PunicaWrapperCPU.add_lora_linear is ours.add_lora_linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("prefill", [True, False], ids=["prefill-metadata", "decode-metadata"])
def test_add_lora_linear_matches_vllms_wrapper(prefill: bool, dtype: torch.dtype) -> None:
    """Merged qkv-style layer (three output slices) with adapters in slots 0, 2 and none (-1), through a real
    PunicaWrapperCPU whose metadata vLLM computes from a LoRAMapping. bf16: ours rounds the rank-r intermediate to
    bf16 where vLLM keeps it fp32, so the two agree to bf16 rounding."""
    torch.manual_seed(1)
    token_ids = [1] * 5 + [3] * 4 + [0] * 3  # per-token adapter ids; 0 = no LoRA
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=8, device="cpu")
    mapping = LoRAMapping(token_ids, token_ids, is_prefill=prefill)
    wrapper.update_metadata(mapping, [1, None, 3, None], max_loras=L, vocab_size=100)
    assert wrapper.token_lora_indices.tolist() == [0] * 5 + [2] * 4 + [-1] * 3
    slices = (D_OUT, 8, 8)
    a = tuple(torch.randn(L, 1, R, D_IN, dtype=dtype) for _ in slices)
    b = tuple(torch.randn(L, 1, size, R, dtype=dtype) for size in slices)
    x, y = torch.randn(len(token_ids), D_IN, dtype=dtype), torch.randn(len(token_ids), sum(slices), dtype=dtype)
    theirs, mine = y.clone(), y.clone()
    VLLM.add_lora_linear(wrapper, theirs, x, a, b, 0.5, slices)
    ours.add_lora_linear(wrapper, mine, x, a, b, 0.5, slices)
    exact = dtype == torch.float32
    torch.testing.assert_close(mine, theirs, atol=1e-4 if exact else 0.5, rtol=1e-5 if exact else 2e-2)
    assert torch.equal(mine[-3:], y[-3:])  # rows without an adapter are untouched
    assert (mine[:9] - y[:9]).abs().min() > 0  # the others got a delta in every column


def test_dense_decode_path_is_cached_per_slot_ids_and_rebuilt_when_they_change() -> None:
    """After install(), decode-sized batches use DenseLoRA, built once per slot -> adapter id list: the same
    layer and slots reuse it; a new adapter id in a slot (vLLM has written new weights there) rebuilds it, so the
    new weights are used; each result equals vLLM's own."""
    ours.install()
    torch.manual_seed(2)
    token_ids = [1] * 3 + [3] * 4 + [0] * 2
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=8, device="cpu")
    wrapper.update_metadata(LoRAMapping(token_ids, token_ids, is_prefill=False), [1, None, 3, None], L, 100)
    slices = (D_OUT, 8)
    a = tuple(torch.randn(L, 1, R, D_IN) for _ in slices)
    b = tuple(torch.randn(L, 1, size, R) for size in slices)
    x, y = torch.randn(len(token_ids), D_IN), torch.randn(len(token_ids), sum(slices))

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        theirs, mine = y.clone(), y.clone()
        VLLM.add_lora_linear(wrapper, theirs, x, a, b, 1.0, slices)
        ours.add_lora_linear(wrapper, mine, x, a, b, 1.0, slices)
        return mine, theirs

    mine, theirs = both()
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-5)
    assert torch.equal(mine[-2:], y[-2:])
    (dense,) = [entry[1] for entry in wrapper.persona_dense.values()]
    for t in (*a, *b):  # vLLM activates adapter 4 in slot 2 (where 3 was): it writes the slot's weights in place
        t[2].normal_()
    ours.add_lora_linear(wrapper, y.clone(), x, a, b, 1.0, slices)
    (kept,) = [entry[1] for entry in wrapper.persona_dense.values()]
    assert kept is dense  # same slots: the cache is kept
    token_ids = [1] * 3 + [4] * 4 + [0] * 2
    wrapper.update_metadata(LoRAMapping(token_ids, token_ids, is_prefill=False), [1, None, 4, None], L, 100)
    mine, theirs = both()
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-5)
    (rebuilt,) = [entry[1] for entry in wrapper.persona_dense.values()]
    assert rebuilt is not dense
