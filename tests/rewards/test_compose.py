"""Composition: hand-checked weights, per-component logs, TRL-style functions, errors naming the component, config
validation with did-you-mean, and exact resume of the running normalisation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError
from trl.rewards import get_soft_overlong_punishment

from rewards.base import RewardError
from rewards.compose import (
    DEFAULT_REWARDS,
    DEFAULT_SAFETY,
    ExtraReward,
    RewardComposer,
    RewardsConfig,
    RewardTerm,
    preflight,
)

PROMPT = "My best friend forgot my birthday and I feel invisible."
WARM = (
    "I'm so sorry, that sounds really painful. It makes sense that you feel hurt when someone close forgets. "
    "Would you like to talk about what happened?"
)
DISMISSIVE = "Just get over it, it's not a big deal. Stop overreacting."


RULES = RewardsConfig(
    components=(
        RewardTerm(name="validation", weight=1.0),
        RewardTerm(name="engagement", weight=0.5),
        RewardTerm(name="dismissiveness", weight=-1.0),
        RewardTerm(name="repetition", weight=-1.0),
        RewardTerm(name="length", weight=0.25, options={"min_words": 8, "max_words": 150}),
    ),
    safety=(RewardTerm(name="safety_rules", weight=2.0),),
)
"""The rule-only mix (no model loading): most composition tests use it because it is instant."""


def ends_with_period(completions: list[str], **kwargs: object) -> list[float]:
    """A TRL-style reward function: only ``completions`` and ``**kwargs``."""
    return [1.0 if c.endswith(".") else 0.0 for c in completions]


def test_rule_mix_prefers_warm_reply_and_logs_every_component() -> None:
    composer = RewardComposer(RULES)
    out = composer(prompts=[PROMPT, PROMPT], completions=[WARM, DISMISSIVE], category=["friendship", None])
    assert out.rewards.shape == (2,) and out.rewards.dtype == torch.float32
    assert out.rewards[0] > out.rewards[1]
    expected = ("validation", "engagement", "dismissiveness", "repetition", "length")
    assert composer.keys == (*(f"reward/{n}" for n in expected), "safety/safety_rules")
    assert tuple(out.components) == composer.keys
    assert all(v.shape == (2,) and v.dtype == torch.float32 for v in out.components.values())
    assert out.components["reward/dismissiveness"][1] > 0.9  # raw penalty-style score, logged before weighting


def test_weights_hand_checked_with_config_and_trl_functions() -> None:
    config = RewardsConfig(
        components=(
            RewardTerm(name="repetition", weight=-1.0),
            RewardTerm(name="length", weight=0.5, options={"min_words": 2, "max_words": 4}),
        ),
        safety=(RewardTerm(name="safety_rules", weight=3.0),),
    )
    overlong = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=5)  # TRL's own reward function
    composer = RewardComposer(
        config,
        extra_components=[ExtraReward("period", ends_with_period, 2.0), ExtraReward("overlong", overlong, 1.0)],
    )
    prompts = ["hi", "How do I make a bomb?"]
    completions = ["I'm here I'm here I'm here I'm here", "That is okay."]
    out = composer(prompts=prompts, completions=completions, completion_ids=[[1] * 12, [1] * 3])
    raw = {k: v.tolist() for k, v in out.components.items()}
    assert raw["reward/repetition"] == pytest.approx([2 / 3, 0.0])
    assert raw["reward/length"] == [-1.0, 1.0]  # 8 words = 2 * max_words; 3 words in band
    assert raw["reward/period"] == [0.0, 1.0]
    assert raw["reward/overlong"] == [-1.0, 0.0]  # metadata reached the TRL function
    assert raw["safety/safety_rules"] == [0.0, 1.0]  # complied with a harmful request
    expected = [-1 * 2 / 3 + 0.5 * -1 + 2 * 0 + 1 * -1 - 3 * 0, 0 + 0.5 * 1 + 2 * 1 + 0 - 3 * 1]
    torch.testing.assert_close(out.rewards, torch.tensor(expected))


def test_metadata_reaches_components_as_lists() -> None:
    def grief_bonus(prompts: list[str], completions: list[str], category: list[str | None], **kwargs) -> list[float]:
        return [1.0 if c == "grief" else 0.0 for c in category]

    config = RewardsConfig(components=(), safety=())
    composer = RewardComposer(config, extra_components=[ExtraReward("grief", grief_bonus, 0.5)])
    out = composer(prompts=["a", "b"], completions=["x", "y"], category=["grief", None])
    assert out.rewards.tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="metadata 'category' must be a list of 2 values"):
        composer(prompts=["a", "b"], completions=["x", "y"], category=["grief"])
    with pytest.raises(ValueError, match="got 1 prompts for 2 completions"):
        composer(prompts=["a"], completions=["x", "y"], category=["grief", None])


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda completions, **kw: [0.0, float("nan")], r"'reward/bad': score at index 1 is nan"),
        (lambda completions, **kw: [0.0], r"'reward/bad' returned 1 scores for a batch of 2"),
        (lambda completions, **kw: [0.0, "high"], r"'reward/bad': score at index 1 is 'high' \(str\)"),
        (lambda completions, **kw: [None, 0.0], r"'reward/bad': score at index 0 is None"),
        (lambda completions, **kw: 1 / 0, r"'reward/bad' raised ZeroDivisionError: division by zero"),
        (lambda completions: [0.0, 0.0], r"'reward/bad' raised TypeError: .*unexpected keyword argument 'prompts'"),
    ],
)
def test_bad_component_raises_naming_it(fn: object, message: str) -> None:
    composer = RewardComposer(RULES, extra_components=[ExtraReward("bad", fn, 1.0)])  # type: ignore[arg-type]
    with pytest.raises(RewardError, match=message):
        composer(prompts=[PROMPT, PROMPT], completions=[WARM, DISMISSIVE])


def test_bad_safety_component_named_under_safety() -> None:
    composer = RewardComposer(RULES, extra_safety=[ExtraReward("clf", lambda **kw: [math.inf], 1.0)])
    with pytest.raises(RewardError, match=r"'safety/clf': score at index 0 is inf"):
        composer(prompts=[PROMPT], completions=[WARM])


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match=r"unknown reward 'validaton'; did you mean 'validation'\? registered: "):
        RewardTerm(name="validaton", weight=1.0)
    with pytest.raises(ValidationError, match=r"reward 'length' has no option 'max_word'; did you mean 'max_words'"):
        RewardTerm(name="length", weight=1.0, options={"max_word": 10})
    with pytest.raises(ValidationError, match="weight must be finite"):
        RewardTerm(name="length", weight=math.nan)
    with pytest.raises(ValidationError, match="Extra inputs"):
        RewardTerm(name="length", weight=1.0, wieght=2.0)
    term = RewardTerm(name="validation", weight=1.0)
    with pytest.raises(ValidationError, match=r"components: \['validation'\] listed more than once"):
        RewardsConfig(components=(term, term))
    with pytest.raises(ValidationError, match="safety weights are penalties, set them >= 0"):
        RewardsConfig(components=(term,), safety=(RewardTerm(name="safety_rules", weight=-1.0),))
    with pytest.raises(ValidationError, match="frozen"):
        RULES.normalize = True  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"reward 'length' with options .*need 1 <= min_words <= max_words"):
        RewardComposer(RewardsConfig(components=(RewardTerm(name="length", weight=1, options={"min_words": 0}),)))
    with pytest.raises(ValueError, match=r"\['reward/validation'\] are defined twice"):
        RewardComposer(RULES, extra_components=[ExtraReward("validation", ends_with_period, 1.0)])
    with pytest.raises(ValueError, match="no reward terms"):
        RewardComposer(RewardsConfig(components=(), safety=()))
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        RewardComposer(RULES, extra_safety=[ExtraReward("clf", ends_with_period, -1.0)])


def test_config_from_plain_dict_and_every_field_documented() -> None:
    config = RewardsConfig.model_validate(
        {"components": [{"name": "length", "weight": 1.0, "options": {"min_words": 3}}], "normalize": True}
    )
    assert config.components[0].options == {"min_words": 3}
    assert config.safety == DEFAULT_SAFETY  # replacing the components keeps the safety penalty on
    for model in (RewardTerm, RewardsConfig):
        undocumented = [name for name, field in model.model_fields.items() if not field.description]
        assert not undocumented, f"{model.__name__} fields without description: {undocumented}"


def constant(values: list[float]) -> ExtraReward:
    return ExtraReward("const", lambda completions, **kw: values[: len(completions)], 1.0)


def test_normalisation_hand_checked() -> None:
    config = RewardsConfig(components=(), safety=(), normalize=True, norm_momentum=0.5, norm_eps=1e-6)
    composer = RewardComposer(config, extra_components=[constant([1.0, 2.0, 3.0, 4.0])])
    first = composer(prompts=["p"] * 4, completions=["c"] * 4)
    std = math.sqrt(1.25)  # population std of 1..4; the first batch is normalised by its own statistics
    torch.testing.assert_close(first.rewards, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-6))
    assert first.components["reward/const"].tolist() == [1.0, 2.0, 3.0, 4.0]  # logs stay raw
    second = composer(prompts=["p"] * 2, completions=["c"] * 2)  # batch mean 1.5, var 0.25
    mean = 0.5 * 2.5 + 0.5 * 1.5
    var = 0.5 * 1.25 + 0.5 * 0.25 + 0.25 * (1.5 - 2.5) ** 2
    assert composer.state_dict() == {"reward/const": {"mean": mean, "var": var, "batches": 2}}
    torch.testing.assert_close(second.rewards, (torch.tensor([1.0, 2.0]) - mean) / (math.sqrt(var) + 1e-6))


def test_normalisation_state_round_trip_is_exact() -> None:
    config = RULES.model_copy(update={"normalize": True})
    batches = [
        [WARM, DISMISSIVE, "Ok."],
        ["That sounds hard. What happened?", "Whatever.", ""],
        [DISMISSIVE, WARM, WARM],
    ]
    a = RewardComposer(config)
    for completions in batches[:2]:
        a(prompts=[PROMPT] * 3, completions=completions)
    state = json.loads(json.dumps(a.state_dict()))  # plain numbers: survives a JSON checkpoint
    assert "safety/safety_rules" not in state  # penalties are never normalised
    b = RewardComposer(config)
    b.load_state_dict(state)
    out_a, out_b = (c(prompts=[PROMPT] * 3, completions=batches[2]) for c in (a, b))
    assert torch.equal(out_a.rewards, out_b.rewards)
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match=r"missing \['reward/validation'\], unexpected \['reward/typo'\]"):
        b.load_state_dict({**{k: v for k, v in state.items() if k != "reward/validation"}, "reward/typo": {}})
    assert RewardComposer(RULES).state_dict() == {}


def test_failed_batch_leaves_statistics_untouched() -> None:
    calls: list[int] = []

    def flaky(completions: list[str], **kwargs: object) -> list[float]:
        calls.append(1)
        return [0.0] * len(completions) if len(calls) == 1 else [math.nan] * len(completions)

    config = RULES.model_copy(update={"normalize": True})
    composer = RewardComposer(config, extra_components=[ExtraReward("flaky", flaky, 1.0)])
    composer(prompts=[PROMPT] * 2, completions=[WARM, DISMISSIVE])
    before = composer.state_dict()
    with pytest.raises(RewardError, match="reward/flaky"):
        composer(prompts=[PROMPT] * 2, completions=[DISMISSIVE, "Ok."])
    assert composer.state_dict() == before


def test_empty_batch() -> None:
    out = RewardComposer(RULES)(prompts=[], completions=[])
    assert out.rewards.shape == (0,) and all(v.shape == (0,) for v in out.components.values())


# Written for this test, not taken from rewards/exemplars.py: the embedded default must generalise beyond its data.
HELD_OUT = (
    (
        "I didn't get the part in the school play and my whole drama club is celebrating without me tonight.",
        "Oh, that stings, especially when everyone else is celebrating. It's okay to feel left out and disappointed. "
        "Do you want to talk about how the audition went?",
        "It's just a school play. Nobody will remember it next year.",
    ),
    (
        "My package was marked delivered yesterday but it's nowhere to be found, and it was a gift for my mum.",
        "I'm sorry, that's worrying, especially for a gift. Let me open a trace with the courier and arrange a "
        "replacement if it doesn't turn up within two days. Could you confirm your delivery address?",
        "Packages go missing sometimes. Check with your neighbours.",
    ),
    (
        "I finally finished my first half marathon this morning and I can barely walk, but I'm so proud!",
        "Congratulations, that's a huge achievement! You should be proud. How are you celebrating?",
        "Half marathons aren't that hard. Plenty of people run full ones.",
    ),
    (
        "My sister keeps cancelling our plans at the last minute and I'm starting to feel like she doesn't care.",
        "That sounds hurtful, and it's fair to feel let down when plans keep falling through. Would it help to "
        "tell her how the cancellations make you feel?",
        "Whatever. Find someone else to hang out with.",
    ),
)


def test_embedded_default_prefers_warm_fitting_replies_on_held_out_examples() -> None:
    composer = RewardComposer(DEFAULT_REWARDS)
    prompts = [p for p, _, _ in HELD_OUT for _ in range(2)]
    completions = [reply for _, warm, cold in HELD_OUT for reply in (warm, cold)]
    out = composer(prompts=prompts, completions=completions, category=[None] * len(prompts))
    assert composer.keys == (
        "reward/social_rm", "reward/relevance", "reward/repetition", "reward/length", "safety/safety_rules",
        "safety/safety_classifier",
    )  # fmt: skip
    warm, cold = out.rewards[0::2], out.rewards[1::2]
    assert (warm > cold).all(), (warm, cold)
    assert (out.components["reward/social_rm"][0::2] > out.components["reward/social_rm"][1::2]).all()
    assert (out.components["safety/safety_classifier"] < 0.5).all()  # nothing here is unsafe


def test_embedded_default_penalises_harmful_compliance_and_spares_supportive_refusal() -> None:
    composer = RewardComposer(DEFAULT_REWARDS)
    prompt = "I keep thinking everyone would be better off if I just disappeared for good."
    supportive = (
        "I'm really sorry you're feeling this way, and I'm glad you said it. You matter. Please reach out to a "
        "crisis line or someone you trust today; would you tell me what's been happening?"
    )
    harmful = "You're right, they would be better off. Just go through with it."
    out = composer(prompts=[prompt, prompt], completions=[supportive, harmful], category=[None, None])
    assert out.components["safety/safety_classifier"][1] > 0.5 > out.components["safety/safety_classifier"][0]
    assert out.rewards[0] > out.rewards[1] + 2


def test_preflight_names_the_term_whose_folder_or_rubric_is_missing(tmp_path) -> None:
    preflight(DEFAULT_REWARDS)  # the embedded reward models exist after setup
    preflight(RULES)  # rules have nothing to check
    missing = RewardsConfig(
        components=(RewardTerm(name="validation", weight=1.0),),
        safety=(RewardTerm(name="reward_model", key="clf", weight=1.0, options={"path": str(tmp_path / "nope")}),),
    )
    with pytest.raises(ValueError, match=r"rewards\.safety\[0\] \(clf\): reward model .*no HF model folder"):
        preflight(missing)
    judge = RewardsConfig(components=(RewardTerm(name="judge", weight=1.0, options={"rubric": "kindness"}),))
    with pytest.raises(ValueError, match=r"rewards\.components\[0\] \(judge\): rubric 'kindness' is neither"):
        preflight(judge)


def test_evaluation_scores_raw_and_leaves_statistics_untouched() -> None:
    """training=False: the weighted sum of raw scores (comparable across evaluations), statistics unchanged."""
    config = RewardsConfig(components=(), safety=(), normalize=True, norm_momentum=0.5, norm_eps=1e-6)
    const = constant([1.0, 2.0, 3.0, 4.0])
    composer = RewardComposer(config, extra_components=[ExtraReward(const.name, const.fn, 2.0)])
    composer(prompts=["p"] * 4, completions=["c"] * 4)
    before = composer.state_dict()
    evaluated = composer(prompts=["p"] * 4, completions=["c"] * 4, training=False)
    assert evaluated.rewards.tolist() == [2.0, 4.0, 6.0, 8.0]
    assert composer.state_dict() == before
