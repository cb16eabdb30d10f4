"""Prompt data: the builtin file, jsonl / parquet / save_to_disk loading, row errors, PromptStream order and resume."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.prompts import (
    BUILTIN_PROMPTS,
    HELDOUT_SITUATIONS,
    PromptDataError,
    PromptRecord,
    PromptStream,
    load_eval_prompts,
    load_prompts,
)

CHAT = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hi."},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "My cat is sick."},
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One JSON document per line (strings are written verbatim, so tests can plant broken lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def records(n: int) -> list[PromptRecord]:
    return [PromptRecord(({"role": "user", "content": f"p{i}"},), None, f"mem:{i}") for i in range(n)]


def contents(batch: list[PromptRecord]) -> list[str]:
    return [r.messages[-1]["content"] for r in batch]


# ---- loading ----


def test_builtin_prompts() -> None:
    recs = load_prompts("builtin")
    assert len(recs) == 60
    assert Counter(r.category for r in recs) == {"counselling": 20, "customer_service": 20, "everyday_social": 20}
    texts = [r.messages[0]["content"] for r in recs]
    assert len(set(texts)) == 60
    assert all(len(r.messages) == 1 and r.messages[0]["role"] == "user" for r in recs)
    assert all(1 <= len(re.findall(r"[.!?](?:\s|$)", t)) <= 3 for t in texts)  # 1-3 sentences
    assert recs[0].source == f"{BUILTIN_PROMPTS}:1" and recs[-1].source == f"{BUILTIN_PROMPTS}:60"


def test_jsonl_messages_and_prompt_rows(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        json.dumps({"messages": CHAT, "category": "pets", "extra": 1})
        + "\n\n"  # blank line 2 is skipped, line numbers still count it
        + json.dumps({"prompt": "I got the job!"})
        + "\n",
        encoding="utf-8",
    )
    first, second = load_prompts(path)
    assert first == PromptRecord(tuple(CHAT), "pets", f"{path}:1")
    assert second == PromptRecord(({"role": "user", "content": "I got the job!"},), None, f"{path}:3")


def test_custom_field_names(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"text": "Hello", "kind": "a"}, {"chat": [{"role": "user", "content": "x"}]}]
    )
    recs = load_prompts(path, prompt_field="text", messages_field="chat", category_field="kind")
    assert [r.category for r in recs] == ["a", None]
    assert contents(recs) == ["Hello", "x"]


def test_system_prompt_prepended_only_when_missing(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Hi"}, {"messages": CHAT}])
    plain, chat = load_prompts(path, system_prompt="You are warm.")
    assert plain.messages == ({"role": "system", "content": "You are warm."}, {"role": "user", "content": "Hi"})
    assert chat.messages == tuple(CHAT)  # already has a system message


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.Table.from_pylist(
        [{"messages": CHAT, "prompt": None, "category": "pets"}, {"messages": None, "prompt": "Hey", "category": None}]
    )
    pq.write_table(table, path)
    first, second = load_prompts(path)
    assert first == PromptRecord(tuple(CHAT), "pets", f"{path}:row 0")
    assert second == PromptRecord(({"role": "user", "content": "Hey"},), None, f"{path}:row 1")


def test_save_to_disk_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    datasets.Dataset.from_list([{"prompt": "a", "category": "x"}, {"prompt": "b", "category": "y"}]).save_to_disk(
        str(folder)
    )
    recs = load_prompts(folder)
    assert contents(recs) == ["a", "b"] and [r.category for r in recs] == ["x", "y"]
    assert recs[1].source == f"{folder}:row 1"


# ---- errors ----


@pytest.mark.parametrize(
    ("bad_row", "needle"),
    [
        ('{"prompt": "broken', "invalid JSON"),
        ("[1, 2]", "row must be a JSON object"),
        ({"category": "x"}, "missing both fields 'messages' and 'prompt'"),
        ({"prompt": "a", "messages": CHAT}, "has both fields 'messages' and 'prompt'"),
        ({"prompt": 5}, "field 'prompt' must be a string"),
        ({"prompt": "   "}, "field 'prompt' is empty"),
        ({"prompt": "a", "category": 3}, "field 'category' must be a non-empty string"),
        ({"messages": []}, "field 'messages' must be a non-empty list"),
        ({"messages": "hi"}, "field 'messages' must be a non-empty list"),
        ({"messages": ["hi"]}, "field messages[0] must be an object"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "field messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": 7}]}, "field messages[0].content must be a string"),
        (
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": ""}]},
            "messages[1].content is empty",
        ),
        ({"messages": CHAT[:3]}, "field messages[2].role: the last message must be from the user, got 'assistant'"),
    ],
)
def test_malformed_jsonl_row_names_file_line_and_field(tmp_path: Path, bad_row: Any, needle: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": "ok too"}, bad_row, {"prompt": "after"}])
    with pytest.raises(PromptDataError, match=re.escape("bad.jsonl: line 3: ")) as info:
        load_prompts(path)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_parquet_row_names_row_index(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": None}]), path)
    with pytest.raises(PromptDataError, match=r"bad\.parquet: row 3: missing both fields 'messages' and 'prompt'"):
        load_prompts(path)


def test_malformed_folder_row_names_row_index(tmp_path: Path) -> None:
    folder = tmp_path / "dsbad"
    rows = [{"messages": [{"role": "user", "content": "a"}]}, {"messages": [{"role": "assistant", "content": "b"}]}]
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    with pytest.raises(PromptDataError, match=r"dsbad: row 1: field messages\[0\]\.role: the last message must be"):
        load_prompts(folder)


def test_dataset_dict_folder_asks_for_a_split(tmp_path: Path) -> None:
    folder = tmp_path / "dd"
    split = datasets.Dataset.from_list([{"prompt": "a"}])
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(folder))
    with pytest.raises(PromptDataError, match=r"dd: is a DatasetDict with splits \[train, test\]; pass one split"):
        load_prompts(folder)
    assert contents(load_prompts(folder / "train")) == ["a"]


def test_empty_file_missing_path_and_unknown_format(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PromptDataError, match=r"empty\.jsonl: no prompt rows found"):
        load_prompts(empty)
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\nhi\n", encoding="utf-8")
    with pytest.raises(PromptDataError, match=r"p\.csv: unsupported data file format '\.csv'"):
        load_prompts(csv)
    with pytest.raises(PromptDataError, match="system_prompt must be a non-empty string"):
        load_prompts("builtin", system_prompt="")


# ---- PromptStream ----


def test_stream_is_deterministic_and_covers_each_epoch() -> None:
    recs = records(10)
    a, b = PromptStream(recs, 5, seed=3), PromptStream(recs, 5, seed=3)
    batches = [contents(a.next_batch()) for _ in range(6)]
    assert batches == [contents(b.next_batch()) for _ in range(6)]
    for epoch in range(3):  # every epoch is a permutation of all records
        assert sorted(batches[2 * epoch] + batches[2 * epoch + 1]) == sorted(contents(recs))
    assert batches[0] + batches[1] != batches[2] + batches[3]  # reshuffled with seed + epoch
    assert batches != [contents(PromptStream(recs, 5, seed=4).next_batch()) for _ in range(6)]
    ordered = PromptStream(recs, 4, seed=3, shuffle=False)
    assert [contents(ordered.next_batch()) for _ in range(3)] == [
        ["p0", "p1", "p2", "p3"],
        ["p4", "p5", "p6", "p7"],
        ["p8", "p9", "p0", "p1"],  # crosses into epoch 1 seamlessly
    ]
    assert ordered.state_dict()["epoch"] == 1 and ordered.state_dict()["position"] == 2


def test_stream_crosses_epochs_with_shuffle() -> None:
    recs = records(7)
    stream = PromptStream(recs, 3, seed=0)
    flat = [p for _ in range(7) for p in contents(stream.next_batch())]  # 21 = 3 full epochs
    for epoch in range(3):
        assert sorted(flat[7 * epoch : 7 * (epoch + 1)]) == sorted(contents(recs))
    assert stream.state_dict()["epoch"] == 3 and stream.state_dict()["position"] == 0


def test_stream_wraps_when_batch_larger_than_records() -> None:
    recs = records(3)
    stream = PromptStream(recs, 8, seed=1)
    batch = contents(stream.next_batch())
    assert len(batch) == 8
    assert Counter(batch[:6]) == {"p0": 2, "p1": 2, "p2": 2}  # two full epochs, then two of the third
    assert stream.state_dict() == {"epoch": 2, "position": 2, "seed": 1, "num_records": 3}


def test_stream_resume_yields_same_batches() -> None:
    recs = records(11)
    stream = PromptStream(recs, 4, seed=7)
    for _ in range(3):
        stream.next_batch()
    state = json.loads(json.dumps(stream.state_dict()))  # JSON round trip, as a checkpoint would
    expected = [contents(stream.next_batch()) for _ in range(4)]
    resumed = PromptStream(recs, 4, seed=7)
    resumed.load_state_dict(state)
    assert [contents(resumed.next_batch()) for _ in range(4)] == expected


def test_stream_rejects_bad_arguments_and_mismatched_state() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        PromptStream([], 2, seed=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PromptStream(records(3), 0, seed=0)
    state = PromptStream(records(3), 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_records=3, seed=0, but this stream has num_records=4, seed=0"):
        PromptStream(records(4), 2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        PromptStream(records(3), 2, seed=0).load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="out-of-range"):
        PromptStream(records(3), 2, seed=0).load_state_dict({**state, "position": 3})


def test_eval_prompts_spread_over_categories(tmp_path: Path) -> None:
    """The default held-out set: project situations of the held-out split, in turn by category, as user turns."""
    from policies.situations import load_situations

    held_out = {s.text for s in load_situations(split="heldout")}
    records = load_eval_prompts(HELDOUT_SITUATIONS, 7, system_prompt="Be kind.")
    assert len(records) == 7 and len({r.category for r in records}) == 7  # seven categories, one each
    assert all(r.messages[0] == {"role": "system", "content": "Be kind."} for r in records)
    assert all(r.messages[-1]["content"] in held_out for r in records)
    assert not held_out & {r.messages[-1]["content"] for r in load_prompts("builtin")}  # RL never trains on them
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "category": c}) + "\n" for i, c in enumerate("aabbc")))
    assert [r.messages[-1]["content"] for r in load_eval_prompts(path, 3)] == ["p0", "p2", "p4"]
