"""RL prompt data: load chat prompts from jsonl / parquet / ``save_to_disk`` folders, and stream them in batches.

A row has EITHER a chat-message list under ``messages_field`` (``[{"role": ..., "content": ...}, ...]``, roles in
system/user/assistant, non-empty string contents, the last message from the user) OR a plain string under
``prompt_field`` (becomes one user message), plus an optional ``category`` string. Other keys are ignored.

Every malformed row raises ``PromptDataError`` naming the file, the line (jsonl, 1-based) or row index (parquet and
arrow folders, 0-based), the field and the problem. Nothing is silently dropped; a file with no rows is an error.

``PromptStream`` yields deterministic, epoch-shuffled batches and resumes exactly from ``state_dict()``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
BUILTIN_PROMPTS = Path(__file__).parent / "prompt_data" / "situations.jsonl"
"""The shipped situation prompts, loaded by ``load_prompts("builtin")``."""


HELDOUT_SITUATIONS = "heldout-situations"
"""``data.eval_path``'s default: the project's held-out situations (policies/persona_data), used by no training."""


class PromptDataError(ValueError):
    """A prompt file or one of its rows is malformed; the message names the file, line/row, field and problem."""


@dataclass(frozen=True)
class PromptRecord:
    """One RL prompt: chat messages ending with a user turn, an optional category, and where it came from."""

    messages: tuple[dict[str, str], ...]  # {"role": "system" | "user" | "assistant", "content": str}, last is user
    category: str | None
    source: str  # "data/x.jsonl:17" (1-based line) or "data/x.parquet:row 3" (0-based row index)


@dataclass(frozen=True)
class _Fields:
    """Column names to read from each row, and the optional system prompt to prepend."""

    messages: str
    prompt: str
    category: str
    system_prompt: str | None


def load_prompts(
    path: str | Path,
    *,
    messages_field: str = "messages",
    prompt_field: str = "prompt",
    category_field: str = "category",
    system_prompt: str | None = None,
) -> list[PromptRecord]:
    """Load every row of a ``.jsonl`` file, a ``.parquet`` file or a ``datasets.save_to_disk`` folder.

    ``path == "builtin"`` loads the shipped situation prompts (``BUILTIN_PROMPTS``). ``system_prompt``, if given, is
    prepended as a system message to rows that have no system message. Raises FileNotFoundError for a missing path
    and PromptDataError for an unsupported format, a malformed row or zero rows.
    """
    path = BUILTIN_PROMPTS if str(path) == "builtin" else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt data not found: {path}")
    if system_prompt is not None and (not isinstance(system_prompt, str) or not system_prompt.strip()):
        raise PromptDataError(f"system_prompt must be a non-empty string or None, got {system_prompt!r}")
    fields = _Fields(messages_field, prompt_field, category_field, system_prompt)
    records = [_parse_row(row, where, source, fields) for row, where, source in read_rows(path)]
    if not records:
        raise PromptDataError(f"{path}: no prompt rows found; the file is empty")
    return records


def load_eval_prompts(path: str | Path, n: int, *, system_prompt: str | None = None) -> list[PromptRecord]:
    """The held-out prompts of the RL run's evaluations: ``n`` of them taken in turn by category, from a prompt
    file (``load_prompts``) or ``HELDOUT_SITUATIONS``."""
    from policies.situations import load_situations, spread_over_categories  # policies imports this module

    if str(path) != HELDOUT_SITUATIONS:
        return spread_over_categories(load_prompts(path, system_prompt=system_prompt), n)
    system = ({"role": "system", "content": system_prompt},) if system_prompt is not None else ()
    return [
        PromptRecord((*system, {"role": "user", "content": s.text}), s.category, f"{HELDOUT_SITUATIONS}:{s.id}")
        for s in spread_over_categories(load_situations(split="heldout"), n)
    ]


_Row = tuple[Any, str, str]  # (row, "file: line 3" for errors, "file:3" for PromptRecord.source)


def read_rows(path: Path) -> Iterator[_Row]:
    """(row, where, source) for every row of a .jsonl / .parquet file or a ``save_to_disk`` folder (also used by
    the reward-model data loader); an unsupported format or invalid JSON raises PromptDataError naming the place."""
    if path.is_dir():
        return _arrow_folder_rows(path)
    if path.suffix == ".jsonl":
        return _jsonl_rows(path)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    raise PromptDataError(
        f"{path}: unsupported data file format {path.suffix!r}; expected .jsonl, .parquet "
        "or a folder written by datasets.Dataset.save_to_disk"
    )


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    """Yield each non-blank line's parsed JSON; invalid JSON raises with the 1-based line number."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptDataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
            yield row, where, f"{path}:{lineno}"


def _parquet_rows(path: Path) -> Iterator[_Row]:
    """Yield each parquet row as a dict, with its 0-based row index."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError) for unreadable files
        raise PromptDataError(f"{path}: cannot read as parquet ({e})") from e
    for index, row in enumerate(table.to_pylist()):
        yield row, f"{path}: row {index}", f"{path}:row {index}"


def _arrow_folder_rows(path: Path) -> Iterator[_Row]:
    """Yield each row of a ``Dataset.save_to_disk`` folder; a DatasetDict folder asks for one split's folder."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise PromptDataError(f"{path}: folder is not a datasets.save_to_disk folder ({e})") from e
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        raise PromptDataError(
            f"{path}: is a DatasetDict with splits [{', '.join(splits)}]; "
            f"pass one split's folder, e.g. {path / splits[0]}"
        )
    for index, row in enumerate(loaded.with_format(None)):
        yield row, f"{path}: row {index}", f"{path}:row {index}"


def _parse_row(row: Any, where: str, source: str, fields: _Fields) -> PromptRecord:
    """Validate one row and turn it into a PromptRecord; every problem raises PromptDataError at ``where``."""
    if not isinstance(row, Mapping):
        raise PromptDataError(f"{where}: row must be a JSON object, got {type(row).__name__}")
    raw_messages, raw_prompt = row.get(fields.messages), row.get(fields.prompt)  # None and absent both mean "not given"
    if raw_messages is None and raw_prompt is None:
        raise PromptDataError(f"{where}: missing both fields {fields.messages!r} and {fields.prompt!r}; give one")
    if raw_messages is not None and raw_prompt is not None:
        raise PromptDataError(f"{where}: has both fields {fields.messages!r} and {fields.prompt!r}; give only one")
    if raw_messages is not None:
        messages = _parse_messages(raw_messages, where, fields.messages)
    else:
        if not isinstance(raw_prompt, str):
            raise PromptDataError(f"{where}: field {fields.prompt!r} must be a string, got {type(raw_prompt).__name__}")
        if not raw_prompt.strip():
            raise PromptDataError(f"{where}: field {fields.prompt!r} is empty")
        messages = [{"role": "user", "content": raw_prompt}]
    if fields.system_prompt is not None and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": fields.system_prompt})
    category = row.get(fields.category)
    if category is not None and (not isinstance(category, str) or not category.strip()):
        raise PromptDataError(f"{where}: field {fields.category!r} must be a non-empty string, got {category!r}")
    return PromptRecord(messages=tuple(messages), category=category, source=source)


def _parse_messages(raw: Any, where: str, field: str) -> list[dict[str, str]]:
    """Check a chat-message list (roles, non-empty string contents, last from the user); keep only role/content."""
    if not isinstance(raw, list) or not raw:
        raise PromptDataError(f"{where}: field {field!r} must be a non-empty list of messages, got {raw!r:.80}")
    messages = []
    for i, message in enumerate(raw):
        at = f"{where}: field {field}[{i}]"
        if not isinstance(message, Mapping):
            raise PromptDataError(f"{at} must be an object with 'role' and 'content', got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise PromptDataError(f"{at}.role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise PromptDataError(f"{at}.content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise PromptDataError(f"{at}.content is empty")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise PromptDataError(
            f"{where}: field {field}[{len(messages) - 1}].role: the last message must be from the user, "
            f"got {messages[-1]['role']!r}"
        )
    return messages


class PromptStream:
    """Endless, deterministic batches over ``records``, reshuffled every epoch with ``random.Random(seed + epoch)``.

    Batches cross epoch boundaries seamlessly (the tail of one epoch is followed by the head of the next), so a
    ``batch_size`` larger than ``len(records)`` simply wraps. ``state_dict()`` / ``load_state_dict()`` resume a stream
    so that it yields exactly the batches the original would have yielded next.
    """

    def __init__(self, records: Sequence[PromptRecord], batch_size: int, seed: int, shuffle: bool = True) -> None:
        if not records:
            raise ValueError("PromptStream needs at least one record")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.records = list(records)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # index into the current epoch's order; always < len(records) between calls
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        """Record indices in the order epoch ``epoch`` visits them."""
        order = list(range(len(self.records)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[PromptRecord]:
        """The next ``batch_size`` records, moving into the next (reshuffled) epoch whenever one runs out."""
        batch = []
        for _ in range(self.batch_size):
            batch.append(self.records[self._order[self.position]])
            self.position += 1
            if self.position == len(self.records):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
        return batch

    def state_dict(self) -> dict[str, int]:
        """JSON-serialisable position: epoch and position, plus seed and num_records to catch a mismatched resume."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_records": len(self.records)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from ``state_dict()``; ValueError if it was saved with other records or another seed."""
        missing = [key for key in ("epoch", "position", "seed", "num_records") if key not in state]
        if missing:
            raise ValueError(f"PromptStream state is missing keys {missing}; pass a dict from state_dict()")
        if state["num_records"] != len(self.records) or state["seed"] != self.seed:
            raise ValueError(
                f"PromptStream state was saved with num_records={state['num_records']}, seed={state['seed']}, "
                f"but this stream has num_records={len(self.records)}, seed={self.seed}; use the same data and seed"
            )
        if not 0 <= state["position"] < len(self.records) or state["epoch"] < 0:
            raise ValueError(f"PromptStream state has an out-of-range epoch/position: {dict(state)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
