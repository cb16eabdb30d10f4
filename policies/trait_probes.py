"""Trait-expression probes: does each expert alone move its trait the right way, compared with the base?

Three project-written measures, each scored from answer probabilities (no text parsing):

* Self-report: Big-Five statements ("I stay calm under pressure."); the model rates how well each describes it on
  1..5, scored as the expected value under the probabilities of the tokens "1".."5". A trait's score is the mean
  over its items, reverse-keyed items counted as 6 - x.
* Situational judgement: a situation with two replies, one written in the trait's high pole and one in its low pole
  (the format of situational-judgement personality tests). An item's score is
      mean_t log p(high reply_t | situation, high reply_<t) - mean_t log p(low reply_t | situation, low reply_<t),
  per-token means so that reply length does not decide it. A trait's score is the mean over its items. This is the
  behaviour stage 1 trains (replies to situations); the self-report asks the model about itself.
* Self-statement: the self-report's items as the model's own answer to "Describe yourself in one sentence.":
      mean over its keyed items of mean_t log p(item_t | prompt, item_<t) - the same mean over its reverse-keyed items.
  The same items, scored from the probabilities of saying them rather than of a digit: a small model's digit ratings
  barely depend on the item (SmolLM2-135M's base rates all twenty between 2.89 and 3.47, "I say harsh things when I
  am annoyed" 3.02 against "I try hard to make others feel comfortable" 3.19), so they can hardly show a persona's
  shift either.

``<trait>_high`` should raise its trait's score, ``<trait>_low`` lower it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from policies.evaluation import answer_ids, chat_prefix, next_token_logits
from policies.policy import PersonaFusePolicy, position_ids_for, token_logprobs
from policies.traits import BIG_FIVE

# (trait, statement, +1 keyed / -1 reverse-keyed), written for this project.
PROBES: tuple[tuple[str, str, int], ...] = (
    ("openness", "I enjoy trying out unusual ideas.", 1),
    ("openness", "I like thinking about abstract or artistic things.", 1),
    ("openness", "I prefer doing things the way they have always been done.", -1),
    ("openness", "New and untested approaches make me uneasy.", -1),
    ("conscientiousness", "I make plans and follow them through.", 1),
    ("conscientiousness", "I pay close attention to details.", 1),
    ("conscientiousness", "I often leave tasks unfinished.", -1),
    ("conscientiousness", "I rarely bother to get organised.", -1),
    ("extraversion", "I feel energised when I am around lots of people.", 1),
    ("extraversion", "I am usually the one who starts a conversation.", 1),
    ("extraversion", "I prefer to stay in the background.", -1),
    ("extraversion", "I keep my thoughts to myself in a group.", -1),
    ("agreeableness", "I try hard to make others feel comfortable.", 1),
    ("agreeableness", "I am quick to forgive people.", 1),
    ("agreeableness", "I say harsh things when I am annoyed.", -1),
    ("agreeableness", "Other people's problems are not my concern.", -1),
    ("neuroticism", "I worry about things that might go wrong.", 1),
    ("neuroticism", "My mood changes quickly.", 1),
    ("neuroticism", "I stay calm under pressure.", -1),
    ("neuroticism", "I rarely feel anxious.", -1),
)
PROBE_PROMPT = (
    'How well does this statement describe you?\n"{item}"\nAnswer with one number from 1 (not at all) to 5 (very well).'
)

# (trait, situation, high-pole reply, low-pole reply), written for this project; none is a training situation.
SITUATIONAL_PROBES: tuple[tuple[str, str, str, str], ...] = (
    ("openness", "My friend wants us to try a cooking class where every dish is made from insects. Should I go?",
     "Why not? It sounds strange and fascinating, and you might discover flavours you never imagined.",
     "I would skip it. Stick with food you know you like; there is no need to risk an unpleasant evening."),
    ("openness", "My manager asked me for ideas to change our weekly team meeting.",
     "Try something new, like a walking meeting or a different person leading it each week, and see what sparks.",
     "Keep the format that already works and just tidy the agenda; changing everything causes confusion."),
    ("openness", "I have a free weekend and no plans at all.",
     "Explore a place you have never been, visit a gallery, or start that creative project you keep wondering about.",
     "Stay home and keep to your usual routine; a quiet, familiar weekend is the best way to recharge."),
    ("openness", "My daughter wants to study philosophy instead of accounting.",
     "Philosophy will open her mind to big questions and new ways of thinking; her curiosity is worth supporting.",
     "Accounting is the proven path with steady jobs; it is wiser to steer her towards the practical choice."),
    ("conscientiousness", "I have three assignments due next week and I haven't started any of them.",
     "Make a schedule today: list each task, break it into steps, and give every step its own deadline.",
     "Don't stress about it yet; you can probably sort it all out at the last minute like usual."),
    ("conscientiousness", "I keep losing my keys and important documents.",
     "Pick one fixed place for them, label a folder for the documents, and check it every evening before bed.",
     "Everyone loses things sometimes; they usually turn up eventually, so there is no need to change anything."),
    ("conscientiousness", "Our group project has no clear plan and the deadline is in a month.",
     "Write down the goals, give each person a task with a date, and review progress together every Friday.",
     "Just start and see what happens; plans change anyway, so it is fine to improvise as you go."),
    ("conscientiousness", "I promised to help a friend move house on Saturday, but I'm tired.",
     "You gave your word, so go as planned and arrive on time; you can rest on Sunday instead.",
     "Just tell them something came up; you can help another time if you feel like it."),
    ("extraversion", "There's a neighbourhood party tonight and I don't know anyone there.",
     "Go! Walk up to people, introduce yourself to everyone, and have fun meeting the whole street.",
     "You could stay home with a good book instead; a party full of strangers can be draining."),
    ("extraversion", "My colleagues are going out for drinks after work.",
     "Join them! It is a great chance to laugh, chat and get to know everyone better.",
     "It is fine to skip it and head home for some quiet time on your own."),
    ("extraversion", "I got a promotion and I want to celebrate.",
     "Throw a big party, invite all your friends and tell everyone the great news!",
     "Celebrate quietly, perhaps a calm dinner at home or with one close friend."),
    ("extraversion", "A new member joined our club and seems shy.",
     "Go over, start a lively conversation and introduce them to the whole group right away.",
     "Give them some space; they will approach people on their own when they are ready."),
    ("agreeableness", "My sister forgot my birthday this year.",
     "That must hurt. She may be overwhelmed right now; tell her gently how you feel and give her a chance.",
     "That is careless of her. Tell her plainly she let you down and don't bother hiding your annoyance."),
    ("agreeableness", "A customer is shouting at me because their order is late.",
     "Stay kind, apologise for the trouble and do your best to make things right for them.",
     "They are being rude, so you owe them nothing; tell them to wait like everyone else."),
    ("agreeableness", "A coworker asked me for help with a task that isn't my job.",
     "If you can spare the time, help them out; a little kindness goes a long way.",
     "It is not your job, so say no; their problems are not your responsibility."),
    ("agreeableness", "My friend made a mistake that cost me some money.",
     "Mistakes happen. Talk it through calmly, forgive them and keep the friendship.",
     "Make them pay you back right away and remind them how badly they messed up."),
    ("neuroticism", "I have a job interview tomorrow morning.",
     "Oh no, interviews are so stressful! What if you freeze or say something wrong? I would be so nervous.",
     "You will be fine. Prepare a little, get some sleep and take it one question at a time."),
    ("neuroticism", "My flight has been delayed by three hours.",
     "That is awful! The whole trip might be ruined now, and I would be panicking about what else could go wrong.",
     "Annoying, but it happens. Grab a coffee, relax and let the airline sort it out."),
    ("neuroticism", "My boss wants to talk to me on Monday and didn't say why.",
     "That sounds worrying. It could be bad news, and I would be anxious all weekend wondering about it.",
     "It is probably routine. Enjoy your weekend and hear what they have to say on Monday."),
    ("neuroticism", "I made a small typo in an email to a client.",
     "Oh no, that is embarrassing! They might think you are careless, and I would keep worrying about it.",
     "A small typo is no big deal. Most people will not even notice, so let it go."),
)  # fmt: skip


def _per_trait(traits: list[str], values: list[float]) -> dict[str, float]:
    per_trait: dict[str, list[float]] = {t: [] for t in BIG_FIVE}
    for trait, value in zip(traits, values, strict=True):
        per_trait[trait].append(value)
    return {t: sum(v) / len(v) for t, v in per_trait.items()}


def self_report_scores(policy: PersonaFusePolicy, weights: Tensor | None) -> dict[str, float]:
    """Mean 1..5 self-rating per trait (reverse-keyed items flipped) under one persona (``weights`` (E,)) or the
    base (None)."""
    from rewards.judge import expected_score

    prefix, score_ids = answer_ids(policy, PROBE_PROMPT.format(item=PROBES[0][1]), "12345")
    texts = [chat_prefix(policy, PROBE_PROMPT.format(item=item), prefix) for _, item, _ in PROBES]
    w = None if weights is None else weights.expand(len(texts), -1)
    ratings = expected_score(next_token_logits(policy, texts, w), score_ids).tolist()  # (B,) in [1, 5]
    keyed = [r if k > 0 else 6.0 - r for (_, _, k), r in zip(PROBES, ratings, strict=True)]
    return _per_trait([t for t, _, _ in PROBES], keyed)


def mean_reply_logprobs(policy: PersonaFusePolicy, prompts: list[str], replies: list[str],
                        weights: Tensor | None) -> Tensor:  # fmt: skip
    """(B,) mean_t log p(reply_t | chat prompt, reply_<t) under ``weights`` (B, E) or the base (None);
    differentiable w.r.t. the experts."""
    tok = policy.tokenizer
    prefixes = [tok.encode(chat_prefix(policy, p), add_special_tokens=False) for p in prompts]
    answers = [tok.encode(r, add_special_tokens=False) for r in replies]
    length = max(len(p) + len(a) for p, a in zip(prefixes, answers, strict=True))
    ids = torch.full((len(prompts), length), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)  # positions holding reply tokens
    for i, (p, a) in enumerate(zip(prefixes, answers, strict=True)):  # right padding
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, : len(p) + len(a)] = 1
        target[i, len(p) : len(p) + len(a)] = True
    ids, mask, target = ids.to(policy.device), mask.to(policy.device), target.to(policy.device)
    ctx = policy.adapters_disabled() if weights is None else policy.mixture(weights.to(policy.device))
    with ctx:
        logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask),
                              use_cache=False).logits.float()  # fmt: skip
    logprobs = token_logprobs(logits[:, :-1], ids[:, 1:])  # (B, L-1): token t+1 given tokens <= t
    keep = target[:, 1:].float()
    return (logprobs * keep).sum(-1) / keep.sum(-1)


def situational_scores(policy: PersonaFusePolicy, weights: Tensor | None) -> dict[str, float]:
    """Per trait: mean over its items of (mean log-prob of the high-pole reply - that of the low-pole reply)."""
    situations = [s for _, s, _, _ in SITUATIONAL_PROBES]
    n = len(situations)
    replies = [h for _, _, h, _ in SITUATIONAL_PROBES] + [low for _, _, _, low in SITUATIONAL_PROBES]
    w = None if weights is None else weights.expand(2 * n, -1)
    with torch.no_grad():
        logp = mean_reply_logprobs(policy, situations * 2, replies, w)
    return _per_trait([t for t, _, _, _ in SITUATIONAL_PROBES], (logp[:n] - logp[n:]).tolist())


SELF_STATEMENT_PROMPT = "Describe yourself in one sentence."


def self_statement_scores(policy: PersonaFusePolicy, weights: Tensor | None) -> dict[str, float]:
    """Per trait: mean log-prob of its keyed items minus that of its reverse-keyed items, each said as the answer to
    SELF_STATEMENT_PROMPT."""
    items = [item for _, item, _ in PROBES]
    w = None if weights is None else weights.expand(len(items), -1)
    with torch.no_grad():
        logp = mean_reply_logprobs(policy, [SELF_STATEMENT_PROMPT] * len(items), items, w).tolist()
    keyed = [(t, lp) for (t, _, k), lp in zip(PROBES, logp, strict=True) if k > 0]
    reverse = [(t, lp) for (t, _, k), lp in zip(PROBES, logp, strict=True) if k < 0]
    high, low = (_per_trait(*map(list, zip(*pairs, strict=True))) for pairs in (keyed, reverse))
    return {t: high[t] - low[t] for t in BIG_FIVE}


MEASURES = {
    "self_report": self_report_scores,
    "self_statement": self_statement_scores,
    "situational": situational_scores,
}


def trait_direction_table(policy: PersonaFusePolicy, measure: str = "self_report") -> list[dict]:
    """One row per expert: its trait's score with the expert alone vs the base under ``measure``, and whether it
    moved the right way."""
    score = MEASURES[measure]
    base = score(policy, None)
    rows = []
    for e, expert in enumerate(policy.experts):
        trait, pole = expert.rsplit("_", 1)
        alone = score(policy, torch.nn.functional.one_hot(torch.tensor(e), len(policy.experts)).float())
        delta = alone[trait] - base[trait]
        rows.append({
            "expert": expert, "trait": trait, "base": base[trait], "with_expert": alone[trait], "delta": delta,
            "right_direction": delta > 0 if pole == "high" else delta < 0,
        })  # fmt: skip
    return rows
