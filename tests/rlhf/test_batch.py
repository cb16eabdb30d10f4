from __future__ import annotations

import pytest
import torch

from rlhf.batch import RolloutBatch, concat, pad_right


def make_batch(n: int, prompt_len: int, response_len: int, offset: int = 0) -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=torch.arange(n * prompt_len).view(n, prompt_len) + 1,
        prompt_mask=torch.ones(n, prompt_len, dtype=torch.long),
        response_ids=torch.ones(n, response_len, dtype=torch.long),
        response_mask=torch.ones(n, response_len, dtype=torch.long),
        group_ids=torch.arange(n) // 2 + offset,
        routing_weights=torch.full((n, 4), 0.5),  # E = 4 (= T of the first batch): never padded
        rollout_logprobs=torch.zeros(n, response_len),
        truncated=torch.zeros(n, dtype=torch.bool),
        completions=[f"c{i}" for i in range(n)],
    )


def test_concat_pads_prompts_left_and_responses_right() -> None:
    merged = concat([make_batch(2, 3, 4), make_batch(2, 5, 2, offset=1)])
    assert merged.prompt_ids.shape == (4, 5) and merged.response_ids.shape == (4, 4)
    assert merged.prompt_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert merged.response_mask[2].tolist() == [1, 1, 0, 0]
    assert torch.equal(merged.routing_weights, torch.full((4, 4), 0.5))
    assert merged.group_ids.tolist() == [0, 0, 1, 1]
    assert merged.completions == ["c0", "c1", "c0", "c1"]


def test_select_and_shards() -> None:
    batch = make_batch(6, 2, 3)
    shards = batch.shards(3)
    assert [len(s) for s in shards] == [2, 2, 2]
    assert shards[1].completions == ["c2", "c3"]
    assert torch.equal(shards[2].prompt_ids, batch.prompt_ids[4:])
    assert batch.input_ids.shape == (6, 5) and batch.response_len == 3


def test_pad_right() -> None:
    assert pad_right([[1, 2], [3]], 0, torch.long).tolist() == [[1, 2], [3, 0]]


def test_to_moves_every_tensor_and_keeps_the_text() -> None:
    batch = make_batch(2, 3, 4)
    batch.rewards, batch.completions = torch.ones(2), ["a", "b"]
    moved = batch.to("meta")  # the device learners on GPUs move to; meta stands in for it here
    assert all(getattr(moved, n).is_meta for n in ("prompt_ids", "response_mask", "rollout_logprobs", "rewards"))
    assert moved.completions == ["a", "b"] and moved.old_logprobs is None and not batch.prompt_ids.is_meta


def test_trimmed_drops_only_columns_that_are_padding_in_every_row() -> None:
    merged = concat([make_batch(2, 3, 4), make_batch(2, 5, 2, offset=1)])  # P = 5, T = 4
    merged.advantages = torch.arange(16.0).view(4, 4) * merged.response_mask
    short = merged.select(slice(0, 2)).trimmed()  # the first batch's rows: 3 prompt and 4 reply tokens
    assert short.prompt_ids.shape == (2, 3) and short.response_ids.shape == (2, 4)
    assert torch.equal(short.prompt_ids, make_batch(2, 3, 4).prompt_ids) and short.prompt_mask.all()
    long = merged.select(slice(2, 4)).trimmed()
    assert long.prompt_ids.shape == (2, 5) and long.response_len == 2 and long.advantages.shape == (2, 2)
    assert torch.equal(long.advantages, merged.advantages[2:, :2]) and long.old_logprobs is None
    assert long.completions == ["c0", "c1"] and torch.equal(long.routing_weights, merged.routing_weights[2:])


def test_trimmed_rows_score_as_the_padded_ones(tiny_policy) -> None:
    """The learner's micro-batches are trimmed: the reply log-probs must not change (positions follow the mask)."""
    g = torch.Generator().manual_seed(0)
    vocab = tiny_policy.model.config.vocab_size
    wide = concat([make_batch(2, 3, 4), make_batch(2, 9, 7)]).select(slice(0, 2))  # 6 + 3 padding columns
    wide.prompt_ids = torch.randint(1, vocab, wide.prompt_ids.shape, generator=g) * wide.prompt_mask
    wide.response_ids = torch.randint(1, vocab, wide.response_ids.shape, generator=g) * wide.response_mask
    wide.response_mask[1, 3] = 0  # a shorter reply in the trimmed batch
    narrow = wide.trimmed()
    assert narrow.input_ids.shape == (2, 7)
    with torch.no_grad():
        full = tiny_policy.ref_logprobs(wide.input_ids, wide.attention_mask, wide.response_len)
        cut = tiny_policy.ref_logprobs(narrow.input_ids, narrow.attention_mask, narrow.response_len)
    torch.testing.assert_close(cut * narrow.response_mask, full[:, :4] * narrow.response_mask, atol=1e-5, rtol=1e-5)


def test_state_round_trips_through_safetensors_and_json(tmp_path) -> None:
    """A checkpoint's pending batch: every tensor and list field comes back; fields left None stay None."""
    import json

    from safetensors.torch import load_file, save_file

    batch = make_batch(2, 3, 4)
    batch.situation_features = torch.randn(2, 5)
    batch.prompts, batch.categories = ["p0", "p1"], ["grief", None]
    tensors, lists = batch.state()
    save_file(tensors, str(tmp_path / "b.safetensors"))
    (tmp_path / "b.json").write_text(json.dumps(lists))
    back = RolloutBatch.from_state(
        load_file(str(tmp_path / "b.safetensors")), json.loads((tmp_path / "b.json").read_text())
    )
    for name, value in tensors.items():
        assert torch.equal(getattr(back, name), value), name
    assert back.completions == batch.completions and back.categories == ["grief", None]
    assert back.old_logprobs is None and back.rewards is None
    del tensors["truncated"]  # saved before the field existed: a clear error, not a TypeError
    with pytest.raises(ValueError, match=r"lacks \['truncated'\]"):
        RolloutBatch.from_state(tensors, lists)
