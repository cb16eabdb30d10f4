"""Trait probes: balanced items, scores on their scale, reply log-probs independent of padding, and a trained
expert moving its own trait (and only its own) the right way."""

from __future__ import annotations

import pytest
import torch

from policies.evaluation import chat_prefix
from policies.policy import token_logprobs
from policies.trait_probes import (
    MEASURES,
    PROBES,
    SELF_STATEMENT_PROMPT,
    SITUATIONAL_PROBES,
    mean_reply_logprobs,
    self_report_scores,
    self_statement_scores,
    trait_direction_table,
)
from policies.traits import BIG_FIVE


def test_items_are_balanced_and_self_report_scores_lie_on_the_scale(tiny_policy) -> None:
    for trait in BIG_FIVE:
        keyed = [k for t, _, k in PROBES if t == trait]
        assert keyed.count(1) == keyed.count(-1) >= 2
        assert sum(t == trait for t, _, _, _ in SITUATIONAL_PROBES) >= 4
    scores = self_report_scores(tiny_policy, None)
    assert set(scores) == set(BIG_FIVE) and all(1.0 <= v <= 5.0 for v in scores.values())
    for measure in MEASURES:
        table = trait_direction_table(tiny_policy, measure)
        assert [r["expert"] for r in table] == list(tiny_policy.experts)
        assert all(r["delta"] == pytest.approx(0.0, abs=1e-5) for r in table)  # fresh experts (B = 0) change nothing


def test_mean_reply_logprobs_do_not_depend_on_the_batch_padding(tiny_policy) -> None:
    prompts = ["A short one.", "A much longer situation that needs quite a few more tokens than the first."]
    replies = ["Fine, thanks for asking, really.", "Yes."]
    with torch.no_grad():
        batched = mean_reply_logprobs(tiny_policy, prompts, replies, None)
    tok = tiny_policy.tokenizer
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):  # one unpadded sequence at a time
        prefix = tok.encode(chat_prefix(tiny_policy, prompt), add_special_tokens=False)
        ids = torch.tensor([prefix + tok.encode(reply, add_special_tokens=False)])
        with torch.no_grad(), tiny_policy.adapters_disabled():
            logits = tiny_policy.model(input_ids=ids).logits.float()
        alone = token_logprobs(logits[:, len(prefix) - 1 : -1], ids[:, len(prefix) :]).mean()
        assert batched[i].item() == pytest.approx(alone.item(), abs=1e-4)


def test_an_expert_trained_on_high_openness_replies_raises_openness_alone(tiny_policy) -> None:
    e = tiny_policy.experts.index("openness_high")
    items = [(s, high) for t, s, high, _ in SITUATIONAL_PROBES if t == "openness"]
    params = [p for n, p in tiny_policy.named_parameters() if p.requires_grad and "router" not in n]
    optimiser = torch.optim.Adam(params, lr=3e-3)
    weights = torch.nn.functional.one_hot(torch.tensor([e] * len(items)), len(tiny_policy.experts)).float()
    for _ in range(8):  # one-hot weights: only this expert's adapters get a gradient
        optimiser.zero_grad()
        loss = -mean_reply_logprobs(tiny_policy, *map(list, zip(*items, strict=True)), weights).mean()
        loss.backward()
        optimiser.step()
    table = {r["expert"]: r for r in trait_direction_table(tiny_policy, "situational")}
    assert table["openness_high"]["delta"] > 0.05 and table["openness_high"]["right_direction"]
    others = [r["delta"] for name, r in table.items() if name != "openness_high"]
    assert max(abs(d) for d in others) < 1e-5  # untouched experts still equal the base


def test_an_expert_trained_to_call_itself_conscientious_raises_the_self_statement_score(tiny_policy) -> None:
    """The self-statement score is keyed items' mean log-prob minus reverse-keyed items' (checked against the
    direct computation); training one expert to say its trait's keyed items moves that trait, for that expert only."""
    items = [item for t, item, _ in PROBES if t == "conscientiousness"]
    keys = torch.tensor([k for t, _, k in PROBES if t == "conscientiousness"])
    with torch.no_grad():
        logp = mean_reply_logprobs(tiny_policy, [SELF_STATEMENT_PROMPT] * len(items), items, None)
    direct = logp[keys > 0].mean() - logp[keys < 0].mean()
    assert self_statement_scores(tiny_policy, None)["conscientiousness"] == pytest.approx(direct.item(), abs=1e-5)

    e = tiny_policy.experts.index("conscientiousness_high")
    keyed = [item for item, k in zip(items, keys.tolist(), strict=True) if k > 0]
    params = [p for n, p in tiny_policy.named_parameters() if p.requires_grad and "router" not in n]
    optimiser = torch.optim.Adam(params, lr=3e-3)
    weights = torch.nn.functional.one_hot(torch.tensor([e] * len(keyed)), len(tiny_policy.experts)).float()
    for _ in range(8):
        optimiser.zero_grad()
        (-mean_reply_logprobs(tiny_policy, [SELF_STATEMENT_PROMPT] * len(keyed), keyed, weights).mean()).backward()
        optimiser.step()
    table = {r["expert"]: r for r in trait_direction_table(tiny_policy, "self_statement")}
    assert table["conscientiousness_high"]["delta"] > 0.05 and table["conscientiousness_high"]["right_direction"]
    assert max(abs(r["delta"]) for name, r in table.items() if name != "conscientiousness_high") < 1e-5
