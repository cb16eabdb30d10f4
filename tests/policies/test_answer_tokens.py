"""answer_tokens: the prefix after which every answer is one token in context, for both kinds of tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from policies.answer_tokens import answer_tokens


def byte_level_bpe(texts: list[str]) -> Tokenizer:
    """A GPT-2-style tokenizer (the space folds into the next word: "Answer: A" -> "Answer", ":", "ĠA")."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 20, trainer)
    return tok


def test_a_byte_level_bpe_reads_the_spaced_letter_after_the_colon() -> None:
    tok = byte_level_bpe([f"Pick one. Answer: {c}" for c in "ABCD"])
    encode = lambda t: tok.encode(t).ids  # noqa: E731
    prefix, ids = answer_tokens(encode, lambda p: "Pick one. " + p, list("ABCD"), ("Answer: ", "Answer:"))
    assert prefix == "Answer:" and [tok.id_to_token(i) for i in ids] == [f"Ġ{c}" for c in "ABCD"]


def test_a_tokenizer_that_splits_the_space_reads_after_it() -> None:
    tok = Tokenizer(models.WordLevel({"Answer": 0, ":": 1, "A": 2, "B": 3, "[UNK]": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    encode = lambda t: tok.encode(t).ids  # noqa: E731
    assert answer_tokens(encode, lambda p: p, ["A", "B"], ("Answer: ", "Answer:")) == ("Answer: ", [2, 3])


def test_every_failure_is_named() -> None:
    tok = byte_level_bpe(["Answer: yes", "Answer: no"])
    encode = lambda t: tok.encode(t).ids  # noqa: E731
    with pytest.raises(ValueError, match=r"after 'Answer:': maybe perhaps not one token"):
        answer_tokens(encode, lambda p: p, ["yes", "maybe perhaps"], ("Answer:",))
    with pytest.raises(ValueError, match=r"after 'Answer:': two share a token"):
        answer_tokens(encode, lambda p: p, ["yes", "yes"], ("Answer:",))
