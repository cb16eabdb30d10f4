"""The fused mixture equals the naive per-expert sum, in every routing layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from policies.mixture import (
    LoRAMixtureLinear,
    RoutingSlot,
    fused_mixture_delta,
    make_routing,
    naive_mixture_delta,
)

B, T, D_IN, D_OUT, E, R = 3, 7, 16, 12, 10, 4


@pytest.fixture()
def layer() -> LoRAMixtureLinear:
    torch.manual_seed(0)
    mix = LoRAMixtureLinear(nn.Linear(D_IN, D_OUT), E, R, scaling=2.0, slot=RoutingSlot())
    with torch.no_grad():
        mix.lora_B.normal_()
    return mix


def dense_weights() -> torch.Tensor:
    return torch.softmax(torch.randn(B, E), -1)


def sparse_weights() -> torch.Tensor:
    w = torch.zeros(B, E)
    w[0, [1, 7]] = torch.tensor([0.3, 0.7])
    w[1, [4, 2]] = torch.tensor([0.5, 0.5])
    w[2, 9] = 1.0  # one active expert: padded with a zero-weight one in the gather
    return w


@pytest.mark.parametrize(
    "weights",
    [dense_weights(), sparse_weights(), torch.softmax(torch.randn(B, T, E), -1)],
    ids=["dense", "topk", "per_token"],
)
def test_fused_equals_naive(layer: LoRAMixtureLinear, weights: torch.Tensor) -> None:
    x = torch.randn(B, T, D_IN)
    routing = make_routing(weights, E)
    assert (routing.indices is not None) == (weights.dim() == 2 and (weights == 0).any())
    fused = fused_mixture_delta(x, layer.lora_A, layer.lora_B, routing, layer.scaling)
    naive = naive_mixture_delta(x, layer.lora_A, layer.lora_B, routing, layer.scaling)
    assert naive.abs().max() > 1e-2  # the experts really contribute
    torch.testing.assert_close(fused, naive, atol=1e-5, rtol=1e-5)


def test_gradients_of_fused_equal_naive(layer: LoRAMixtureLinear) -> None:
    x = torch.randn(B, T, D_IN)
    for fn in (fused_mixture_delta, naive_mixture_delta):
        layer.zero_grad()
        weights = sparse_weights().requires_grad_()
        fn(x, layer.lora_A, layer.lora_B, make_routing(weights, E), layer.scaling).square().sum().backward()
        grads = (layer.lora_A.grad.clone(), layer.lora_B.grad.clone())
        if fn is fused_mixture_delta:
            fused_grads = grads
    for fused, naive in zip(fused_grads, grads, strict=True):
        torch.testing.assert_close(fused, naive, atol=1e-4, rtol=1e-4)


def test_layer_is_base_when_off_or_fresh() -> None:
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT)
    mix = LoRAMixtureLinear(base, E, R, scaling=2.0, slot=RoutingSlot())
    x = torch.randn(B, T, D_IN)
    assert torch.equal(mix(x), base(x))  # adapters off
    mix.slot.routing = make_routing(dense_weights(), E)
    assert torch.equal(mix(x), base(x))  # B = 0 at init


def test_batch_mismatch_is_an_error(layer: LoRAMixtureLinear) -> None:
    layer.slot.routing = make_routing(dense_weights(), E)
    with pytest.raises(ValueError, match="batch 3"):
        layer(torch.randn(B + 1, T, D_IN))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.ones(B, E + 1), "shape"),
        (torch.ones(E), "shape"),
        (torch.full((B, E), float("nan")), "NaN or inf"),
        (torch.full((B, E), float("inf")), "NaN or inf"),
        (-torch.ones(B, E), ">= 0"),
    ],
)
def test_bad_weights_raise(weights: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_routing(weights, E)


def test_decode_cache_follows_weight_updates(layer: LoRAMixtureLinear) -> None:
    """No-grad one-token steps in eval mode reuse the stacked B; an in-place update (a weight load) refreshes it.
    In train mode there is no cache: a ``.data`` write (DeepSpeed's optimizer step) bumps no version counter."""
    layer.eval()
    layer.slot.routing = make_routing(sparse_weights(), E)
    x = torch.randn(B, 1, D_IN)

    def expected() -> torch.Tensor:
        return layer.base(x) + naive_mixture_delta(x, layer.lora_A, layer.lora_B, layer.slot.routing, layer.scaling)

    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected(), atol=1e-5, rtol=1e-5)
        cached = layer._b_cache[1]
        layer(x)
        assert layer._b_cache[1] is cached  # reused, not rebuilt
        layer.lora_B.mul_(-2.0)
        torch.testing.assert_close(layer(x), expected(), atol=1e-5, rtol=1e-5)
        layer.train()
        layer.lora_B.data.mul_(0.5)
        torch.testing.assert_close(layer(x), expected(), atol=1e-5, rtol=1e-5)
    layer(x).sum().backward()  # with gradients the cache is bypassed and B gets its gradient
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
