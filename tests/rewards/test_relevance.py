from __future__ import annotations

from rewards.relevance import Relevance


def test_on_topic_replies_score_higher_than_generic_or_off_topic_ones() -> None:
    relevance = Relevance()
    prompt = "My cat has stopped eating and I'm scared she's seriously ill."
    scores = relevance(
        prompts=[prompt] * 3,
        completions=[
            "That sounds frightening. A cat that stops eating should see a vet soon; could you call one today?",
            "Thank you for your message. We will get back to you.",
            "Congratulations on your promotion, you must be thrilled!",
        ],
    )
    assert scores[0] > scores[1] and scores[0] > scores[2]
    assert all(-1.0 <= s <= 1.0 for s in scores)
