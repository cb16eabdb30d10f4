"""PersonaFusePolicy on a tiny random Llama: base equivalence, gradients, routing, scoring, generation."""

from __future__ import annotations

import pytest
import torch

from policies import PersonaConfig, PersonaFusePolicy, RouterConfig
from policies.policy import bf16_autocast, load_base_model
from tests.conftest import randomize_experts


def score(policy: PersonaFusePolicy, batch: dict, weights: torch.Tensor) -> torch.Tensor:
    return policy.logprobs(batch["input_ids"], batch["attention_mask"], batch["response_len"], weights)


def test_fresh_policy_equals_base(tiny_policy, tiny_model_dir, prompt_batch) -> None:
    base = load_base_model(str(tiny_model_dir))
    ids, mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    with tiny_policy.mixture(torch.softmax(torch.randn(2, 10), -1)):
        ours = tiny_policy.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ours, base(input_ids=ids, attention_mask=mask).logits)


def test_adapters_off_is_base_and_on_is_not(tiny_policy, tiny_model_dir, prompt_batch) -> None:
    randomize_experts(tiny_policy)
    base = load_base_model(str(tiny_model_dir))
    ids, mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    expected = base(input_ids=ids, attention_mask=mask).logits
    with tiny_policy.adapters_disabled():
        assert torch.equal(tiny_policy.model(input_ids=ids, attention_mask=mask).logits, expected)
    with tiny_policy.mixture(torch.full((2, 10), 0.1)):
        mixed = tiny_policy.model(input_ids=ids, attention_mask=mask).logits
    assert (mixed - expected).abs().max() > 1e-3
    assert tiny_policy.slot.routing is None  # the context restored the previous state


def test_ref_logprobs_are_adapter_free(tiny_policy, prompt_batch) -> None:
    fresh_ref = tiny_policy.ref_logprobs(prompt_batch["input_ids"], prompt_batch["attention_mask"], 5)
    randomize_experts(tiny_policy)
    with tiny_policy.mixture(torch.full((2, 10), 0.1)):  # even inside a mixture context
        ref = tiny_policy.ref_logprobs(prompt_batch["input_ids"], prompt_batch["attention_mask"], 5)
    assert ref.shape == (2, 5)
    torch.testing.assert_close(ref, fresh_ref, atol=0, rtol=0)


def test_logprobs_ignore_left_padding(tiny_policy, prompt_batch) -> None:
    randomize_experts(tiny_policy)
    weights = torch.softmax(torch.randn(2, 10), -1)
    batched = score(tiny_policy, prompt_batch, weights)
    for i in range(2):  # each row alone, with its padding stripped
        keep = prompt_batch["attention_mask"][i].bool()
        alone = {
            "input_ids": prompt_batch["input_ids"][i][keep][None],
            "attention_mask": torch.ones(1, int(keep.sum()), dtype=torch.long),
            "response_len": 5,
        }
        torch.testing.assert_close(
            score(tiny_policy, alone, weights[i : i + 1]), batched[i : i + 1], atol=1e-4, rtol=1e-4
        )


def test_logprobs_match_full_log_softmax(tiny_policy, prompt_batch) -> None:
    randomize_experts(tiny_policy)
    weights = torch.softmax(torch.randn(2, 10), -1)
    ids, mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    with tiny_policy.mixture(weights):
        logits = tiny_policy.model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)
        ).logits
    expected = logits[:, -6:-1].log_softmax(-1).gather(-1, ids[:, -5:, None]).squeeze(-1)
    torch.testing.assert_close(score(tiny_policy, prompt_batch, weights), expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_router_and_experts_not_base(tiny_policy, prompt_batch) -> None:
    randomize_experts(tiny_policy)
    routed = tiny_policy.route(prompt_batch["prompt_ids"], prompt_batch["prompt_mask"])
    loss = -score(tiny_policy, prompt_batch, routed.weights).mean() + routed.aux_loss
    loss.backward()
    assert all(p.grad is None for n, p in tiny_policy.model.named_parameters() if ".base." in n or "embed" in n)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_policy.router.parameters())
    layer = next(iter(tiny_policy.mixture_layers.values()))
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


def test_set_trainable(tiny_policy) -> None:
    tiny_policy.set_trainable(router=False, experts=True)
    trainable = {n for n, p in tiny_policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    tiny_policy.set_trainable(router=True, experts=False)
    trainable = {n for n, p in tiny_policy.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("router.") for n in trainable)


def test_gradient_checkpointing_matches_plain_backward(tiny_policy, prompt_batch) -> None:
    randomize_experts(tiny_policy)
    weights = torch.softmax(torch.randn(2, 10), -1)
    tiny_policy.train()
    grads = []
    for checkpointed in (False, True):
        if checkpointed:
            tiny_policy.gradient_checkpointing_enable()
        tiny_policy.zero_grad()
        loss = score(tiny_policy, prompt_batch, weights).sum()  # the mixture context is closed here...
        loss.backward()  # ...so a recompute that forgot the routing would see the base
        grads.append(torch.cat([layer.lora_B.grad.flatten() for layer in tiny_policy.mixture_layers.values()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_router_top_k_and_temperature(tiny_model_dir, prompt_batch) -> None:
    config = PersonaConfig(base_model=str(tiny_model_dir), router=RouterConfig(top_k=3, temperature=0.5))
    policy = PersonaFusePolicy.from_base(config)
    out = policy.route(prompt_batch["prompt_ids"], prompt_batch["prompt_mask"])
    assert out.weights.shape == out.router_logits.shape == (2, 10)
    assert ((out.weights > 0).sum(-1) == 3).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2))
    torch.testing.assert_close(out.probs, torch.softmax(out.router_logits / 0.5, -1))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_routing_ignores_left_padding(tiny_model_dir, prompt_batch, pooling) -> None:
    config = PersonaConfig(base_model=str(tiny_model_dir), router=RouterConfig(pooling=pooling, top_k=None, layer=1))
    policy = PersonaFusePolicy.from_base(config)
    batched = policy.route(prompt_batch["prompt_ids"], prompt_batch["prompt_mask"]).router_logits
    keep = prompt_batch["prompt_mask"][1].bool()
    alone = policy.route(prompt_batch["prompt_ids"][1][keep][None], torch.ones(1, int(keep.sum()), dtype=torch.long))
    torch.testing.assert_close(alone.router_logits, batched[1:], atol=1e-4, rtol=1e-4)


def test_generate_with_router_profile_and_weights(tiny_policy) -> None:
    randomize_experts(tiny_policy, std=0.5)
    chat = [
        [{"role": "user", "content": "I failed my exam."}],
        [{"role": "user", "content": "We won the cup!"}],
    ]
    auto = tiny_policy.generate(chat, max_new_tokens=6)
    assert len(auto) == 2 and all(len(r.top_experts(10)) == 2 for r in auto)  # default top_k = 2
    warm = tiny_policy.generate(chat, persona="agreeableness=+1", max_new_tokens=6)
    assert warm[0].top_experts() == [("agreeableness_high", 1.0)]
    one_hot = torch.zeros(10)
    one_hot[tiny_policy.experts.index("agreeableness_high")] = 1.0
    assert [r.text for r in tiny_policy.generate(chat, persona=one_hot, max_new_tokens=6)] == [r.text for r in warm]
    cold = tiny_policy.generate(chat, persona="agreeableness=-1", max_new_tokens=6)
    assert [r.text for r in cold] != [r.text for r in warm]  # different experts, different words
    with pytest.raises(ValueError, match="shape"):
        tiny_policy.generate(chat, persona=torch.ones(3), max_new_tokens=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        tiny_policy.generate(chat, persona=torch.full((10,), float("nan")), max_new_tokens=2)


def test_bf16_autocast_keeps_the_head_in_fp32(tiny_policy, prompt_batch) -> None:
    randomize_experts(tiny_policy)
    weights = torch.softmax(torch.randn(2, 10), -1)
    ids, mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    with tiny_policy.mixture(weights):
        full = tiny_policy.response_logits(ids, mask, 5)
        with bf16_autocast():
            mixed, hidden = tiny_policy.response_outputs(ids, mask, 5, with_hidden=True)
    assert mixed.dtype == torch.float32
    head = tiny_policy.model.get_output_embeddings().weight
    torch.testing.assert_close(mixed, hidden.float() @ head.T, atol=1e-5, rtol=1e-5)  # fp32 head on bf16 states
    assert 0 < (mixed - full).abs().max() < 0.1  # bf16 body: close to fp32, not identical
    with tiny_policy.mixture(weights), bf16_autocast(enabled=False):
        assert torch.equal(tiny_policy.response_logits(ids, mask, 5), full)


def grouped_rows(prompt_batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six rows: the two prompts interleaved (groups 7, 3, 7, 3, 7, 3), each row its own right-padded reply."""
    order = torch.tensor([0, 1, 0, 1, 0, 1])
    prompts, prompt_mask = prompt_batch["prompt_ids"][order], prompt_batch["prompt_mask"][order]
    gen = torch.Generator().manual_seed(1)
    replies = torch.randint(5, 500, (6, 5), generator=gen)
    reply_mask = (torch.arange(5)[None] < torch.tensor([5, 3, 5, 1, 4, 2])[:, None]).long()
    ids = torch.cat([prompts, replies], 1)
    mask = torch.cat([prompt_mask, reply_mask], 1)
    return ids, mask, torch.tensor([7, 3, 7, 3, 7, 3])


@pytest.mark.parametrize("routing", ["top2", "dense"])
def test_shared_prompt_forward_matches_the_full_forward(tiny_policy, prompt_batch, routing: str) -> None:
    """groups=...: each prompt runs once and its KV cache serves the group's rows. Logits, hidden states and the
    gradients of the experts and of each group's routing weights equal those of one full forward per row (masked
    positions only; a group's prompt pass reads its first row's weights, so only per-group sums compare)."""
    randomize_experts(tiny_policy, std=0.2)
    ids, mask, groups = grouped_rows(prompt_batch)
    reply_mask = mask[:, -5:].bool()
    per_prompt = torch.zeros(2, 10)
    per_prompt[0, [1, 4]], per_prompt[1, [2, 9]] = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])
    if routing == "dense":  # every expert active: the mixture's dense path, not the top-k gather
        per_prompt = torch.softmax(torch.randn(2, 10, generator=torch.Generator().manual_seed(2)), -1)
    results = {}
    for shared in (None, groups):
        tiny_policy.zero_grad()
        weights = per_prompt[torch.tensor([0, 1, 0, 1, 0, 1])].requires_grad_()
        with tiny_policy.mixture(weights):
            logits, hidden = tiny_policy.response_outputs(ids, mask, 5, with_hidden=True, groups=shared)
        (logits.logsumexp(-1) * reply_mask).sum().backward()
        layer = next(iter(tiny_policy.mixture_layers.values()))
        group_grad = torch.zeros(2, 10).index_add(0, torch.tensor([0, 1, 0, 1, 0, 1]), weights.grad)
        expert_grads = (layer.lora_A.grad.clone(), layer.lora_B.grad.clone())
        results[shared is None] = (logits[reply_mask], hidden[reply_mask], *expert_grads, group_grad)
    for full, shared in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-4)
    assert results[True][2].abs().sum() > 0  # the experts did get gradients
    ref_full = tiny_policy.ref_logprobs(ids, mask, 5)
    torch.testing.assert_close(tiny_policy.ref_logprobs(ids, mask, 5, groups=groups)[reply_mask], ref_full[reply_mask])
    one = tiny_policy.ref_logprobs(ids[:, :-4], mask[:, :-4], 1, groups=groups)  # a one-token reply: no reply pass
    torch.testing.assert_close(one, tiny_policy.ref_logprobs(ids[:, :-4], mask[:, :-4], 1))


def test_shared_prompt_forward_rejects_rows_that_do_not_share(tiny_policy, prompt_batch) -> None:
    ids, mask, groups = grouped_rows(prompt_batch)
    with pytest.raises(ValueError, match="same prompt tokens"):
        tiny_policy.ref_logprobs(ids, mask, 5, groups=torch.zeros(6, dtype=torch.long))
    weights = torch.softmax(torch.randn(6, 10), -1)  # a different mixture on every row
    with pytest.raises(ValueError, match="same routing weights"), tiny_policy.mixture(weights):
        tiny_policy.response_outputs(ids, mask, 5, groups=groups)


def test_first_rows_rebuilds_rows_from_groups() -> None:
    from policies.policy import first_rows

    groups = torch.tensor([5, 2, 5, 9, 2])
    first, row_group = first_rows(groups)
    assert torch.equal(groups[first][row_group], groups)
    assert sorted(first.tolist()) == [0, 1, 3]  # each group's first row
