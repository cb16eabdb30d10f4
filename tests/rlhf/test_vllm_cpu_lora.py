"""The grouped LoRA matmuls give exactly vLLM's own torch_ops results (the functions they replace on CPU)."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as vllm_ops

from rlhf import vllm_cpu_lora as ours

L, R, D_IN, D_OUT = 4, 16, 24, 40


@pytest.mark.parametrize("rows", [1, 16, 300], ids=["one", "decode", "prefill"])
@pytest.mark.parametrize("mixed", [True, False], ids=["several-adapters", "one-adapter"])
def test_same_results_as_vllm(rows: int, mixed: bool) -> None:
    torch.manual_seed(rows)
    x = torch.randn(rows, D_IN)
    a, b = torch.randn(L, 1, R, D_IN), torch.randn(L, 1, D_OUT, R)  # vLLM's stacked (slots, 1, out, in) buffers
    idx = torch.randint(0, L, (rows,)) if mixed else torch.full((rows,), 2)
    shrunk = {}
    for name, impl in (("vllm", vllm_ops), ("ours", ours)):
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
