"""The project's labelled situations (policies/persona_data/situations.jsonl): what stage 1 writes persona data
for and what stage 2 teaches the router. Labelling rules: policies/persona_data/LABELLING.md.

A row: ``{"id", "category", "situation", "target": {pole: weight}, "split": "train" | "heldout"}``; the target
names the trait poles the ideal *reply* expresses (weights > 0, summing to 1). A malformed row is an error naming
the file and line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from policies.traits import BIG_FIVE, DEFAULT_EXPERTS

BUILTIN_SITUATIONS = Path(__file__).parent / "persona_data" / "situations.jsonl"


class SituationDataError(ValueError):
    """A situation file or row is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Situation:
    id: str
    category: str
    text: str
    target: dict[str, float]  # trait pole -> weight, weights sum to 1
    split: str  # "train" or "heldout"

    def target_vector(self, experts: tuple[str, ...]) -> Tensor:
        """(E,) target weights in the policy's expert order (poles the policy lacks are an error)."""
        missing = [pole for pole in self.target if pole not in experts]
        if missing:
            raise ValueError(f"situation {self.id}: target poles {missing} are not experts of this policy")
        return torch.tensor([self.target.get(e, 0.0) for e in experts])

    @property
    def primary(self) -> str:
        """The pole with the largest target weight."""
        return max(self.target, key=self.target.get)


def _parse(row: object, where: str) -> Situation:
    if not isinstance(row, dict):
        raise SituationDataError(f"{where}: expected a JSON object")
    for key in ("id", "category", "situation", "split"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise SituationDataError(f"{where}: field {key!r} must be a non-empty string")
    if row["split"] not in ("train", "heldout"):
        raise SituationDataError(f"{where}: split must be 'train' or 'heldout', got {row['split']!r}")
    target = row.get("target")
    if not isinstance(target, dict) or not target:
        raise SituationDataError(f"{where}: field 'target' must be a non-empty {{pole: weight}} object")
    for pole, weight in target.items():
        if pole not in DEFAULT_EXPERTS:
            raise SituationDataError(f"{where}: target pole {pole!r} is not one of {', '.join(DEFAULT_EXPERTS)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise SituationDataError(f"{where}: target weight of {pole} must be a positive number, got {weight!r}")
    if not math.isclose(sum(target.values()), 1.0, abs_tol=1e-6):
        raise SituationDataError(f"{where}: target weights sum to {sum(target.values())}, not 1")
    both = [t for t in BIG_FIVE if f"{t}_high" in target and f"{t}_low" in target]
    if both:
        raise SituationDataError(f"{where}: target names both poles of {both}")
    return Situation(row["id"], row["category"], row["situation"].strip(), dict(target), row["split"])


def load_situations(path: str | Path = "builtin", split: str | None = None) -> list[Situation]:
    """Every situation of a .jsonl / .parquet file or save_to_disk folder ("builtin" = the shipped set), optionally
    one split only."""
    path = BUILTIN_SITUATIONS if str(path) == "builtin" else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"situation file not found: {path}")
    from rlhf.prompts import read_rows  # the project's one row reader: jsonl, parquet, save_to_disk

    rows = [_parse(row, where) for row, where, _ in read_rows(path)]
    ids = [s.id for s in rows]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise SituationDataError(f"{path}: ids {repeated[:5]} appear more than once")
    if not rows:
        raise SituationDataError(f"{path}: no situations")
    return [s for s in rows if split is None or s.split == split]


class _Categorised(Protocol):
    @property
    def category(self) -> str | None: ...


Item = TypeVar("Item", bound=_Categorised)


def spread_over_categories(situations: list[Item], n: int | None) -> list[Item]:
    """The first ``n`` situations (or prompt records) taken in turn from each category (categories in order of
    first appearance, each in file order), so a small subset covers every category instead of the file's first
    one; None (or n >= len): all, in file order."""
    if n is None or n >= len(situations):
        return list(situations)
    by_category: dict[str | None, list[Item]] = {}
    for s in situations:
        by_category.setdefault(s.category, []).append(s)
    queues = list(by_category.values())
    picked: list[Item] = []
    for depth in range(max(len(q) for q in queues)):
        picked += [q[depth] for q in queues if depth < len(q)]
        if len(picked) >= n:
            break
    return picked[:n]
