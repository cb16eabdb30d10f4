"""Which token the model's answer is: the first prefix of the assistant's turn after which every answer ("1".."5",
"A".."D") is exactly one token in context.

Tokenizers differ: most split "Answer: 3" into "Answer", ":", " ", "3", so after "Answer: " the digit is the next
token; byte-level BPEs (GPT-2, SmolLM2) fold the space into a letter ("Answer: A" -> "Answer", ":", "ĠA"), so after
"Answer: " a bare "A" is a sequence the model never saw, and the prompt must end in "Answer:" and read " A".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def answer_tokens(
    encode: Callable[[str], list[int]],
    prompt_for: Callable[[str], str],
    answers: Sequence[str],
    prefixes: Sequence[str],
) -> tuple[str, list[int]]:
    """(prefix, one token id per answer): the first of ``prefixes`` for which each answer, after a space unless the
    prefix ends in one, adds exactly one token to ``encode(prompt_for(prefix))`` and leaves its tokens as they were;
    the ids distinct. Raises ValueError listing what failed after each prefix."""
    tried = []
    for prefix in prefixes:
        gap = "" if prefix.endswith(" ") else " "
        base = encode(prompt_for(prefix))
        ids, bad = [], []
        for answer in answers:
            full = encode(prompt_for(prefix) + gap + answer)
            if full[: len(base)] == base and len(full) == len(base) + 1:
                ids.append(full[-1])
            else:
                bad.append(answer)
        if not bad and len(set(ids)) == len(answers):
            return prefix, ids
        tried.append(f"after {prefix!r}: {', '.join(bad) + ' not one token' if bad else 'two share a token'}")
    raise ValueError("; ".join(tried))
