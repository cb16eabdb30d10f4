"""The RL pole anchor: persona data loading, pairing, block order and the loss on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from policies.traits import DEFAULT_EXPERTS
from rlhf.config import PoleAnchorConfig
from rlhf.pole_anchor import PoleAnchor, load_persona_data


def write_persona_data(folder, experts=DEFAULT_EXPERTS, situations: int = 3) -> None:
    """Every expert answers the same situations; a trait's high pole is upbeat, its low pole gloomy."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in experts:
        word = "wonderful" if name.endswith("_high") else "terrible"
        rows = [{"situation": f"Tell me about day {i}.", "reply": f"It was a {word} day."} for i in range(situations)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_persona_data_reads_every_expert_file_and_names_a_bad_line(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no <expert>\.jsonl"):
        load_persona_data(tmp_path / "absent")
    write_persona_data(tmp_path / "data", ("openness_high", "openness_low"), situations=2)
    data = load_persona_data(tmp_path / "data")
    days = [f"Tell me about day {i}." for i in range(2)]
    assert data == {
        "openness_high": [(day, "It was a wonderful day.") for day in days],
        "openness_low": [(day, "It was a terrible day.") for day in days],
    }
    with (tmp_path / "data" / "openness_low.jsonl").open("a") as f:
        f.write('{"situation": "x"}\n')
    with pytest.raises(ValueError, match=r"openness_low.jsonl: line 3: needs non-empty"):
        load_persona_data(tmp_path / "data")


def test_config_needs_data_when_on() -> None:
    with pytest.raises(ValueError, match="data_dir"):
        PoleAnchorConfig(coef=1.0)
    assert PoleAnchorConfig(coef=0.0).data_dir is None


def test_anchor_pairs_rows_cycles_blocks_and_starts_at_log2(tmp_path, tiny_policy) -> None:
    write_persona_data(tmp_path / "data")
    data = load_persona_data(tmp_path / "data")
    cfg = PoleAnchorConfig(coef=1.0, data_dir=str(tmp_path / "data"), pairs_per_step=4)
    anchor = PoleAnchor(tiny_policy, data, cfg, seed=0)
    assert len(anchor.rows) == 30  # 10 experts x 3 situations, each answered by the opposite pole too
    blocks = [anchor.rows_at(i) for i in range(8)]  # 32 rows: the last block wraps to the start
    assert [r for b in blocks for r in b][:30] == anchor.rows and blocks[7][2:] == anchor.rows[:2]
    assert PoleAnchor(tiny_policy, data, cfg, seed=0).rows == anchor.rows  # same order on every run and rank
    # fresh experts equal the base: every margin is 0
    assert anchor.loss(0).item() == pytest.approx(math.log(2), abs=1e-4)

    del data["neuroticism_low"]
    with pytest.raises(ValueError, match=r"missing \['neuroticism_low'\]"):
        PoleAnchor(tiny_policy, data, cfg, seed=0)
    with pytest.raises(ValueError, match=r"unexpected \['openness_mid'\]"):
        PoleAnchor(tiny_policy, {**data, "neuroticism_low": [], "openness_mid": []}, cfg, seed=0)
    long = {**data, "neuroticism_low": [("Tell me about day 0.", "very " * 400)]}
    with pytest.raises(ValueError, match=r"neuroticism_low\.jsonl: line 1: \d+ tokens, more than .*max_tokens=320"):
        PoleAnchor(tiny_policy, long, cfg, seed=0)
