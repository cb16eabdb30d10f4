"""Reward-model training: the Bradley-Terry loss TRL computes for us, data errors, the grouped split, the length
baseline, and real (tiny) training runs that must beat chance on held-out prompts."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import RewardTrainer

from rewards.exemplars import preference_pairs
from rewards.model import RewardModel
from rewards.training import (
    PairRow,
    RewardDataError,
    RewardTrainingConfig,
    load_rows,
    pair_metrics,
    split_by_group,
    train_reward_model,
)


def _bt(x: float) -> float:
    return math.log1p(math.exp(-x))  # -log sigmoid(x)


def test_trl_bradley_terry_loss_matches_hand_values() -> None:
    """L = mean_i -log sigmoid(r_chosen_i - r_rejected_i - margin_i): the loss our pairs training runs (TRL's)."""
    logits = torch.tensor([[2.0], [0.0], [1.0], [1.0]])  # chosen rows first, then rejected (TRL's collator layout)
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=False),
        args=SimpleNamespace(center_rewards_coefficient=None),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
    )
    model = lambda **_: SimpleNamespace(logits=logits)  # noqa: E731
    inputs = {"input_ids": torch.zeros(4, 2, dtype=torch.long), "attention_mask": torch.ones(4, 2)}
    loss = RewardTrainer.compute_loss(stand_in, model, dict(inputs))
    assert loss.item() == pytest.approx((_bt(2.0 - 1.0) + _bt(0.0 - 1.0)) / 2, abs=1e-6)
    with_margin = RewardTrainer.compute_loss(stand_in, model, {**inputs, "margin": torch.tensor([0.5, 0.0])})
    assert with_margin.item() == pytest.approx((_bt(2.0 - 1.0 - 0.5) + _bt(-1.0)) / 2, abs=1e-6)
    stand_in.args.center_rewards_coefficient = 0.1
    centred = RewardTrainer.compute_loss(stand_in, model, dict(inputs))
    assert centred.item() == pytest.approx(loss.item() + 0.1 * (3.0**2 + 1.0**2) / 2, abs=1e-6)


def _config(tmp_path, train: str, **extra) -> RewardTrainingConfig:
    data = {"train": train, **extra.pop("data", {})}
    return RewardTrainingConfig.model_validate({"output_dir": str(tmp_path / "rm"), "data": data, **extra})


def test_malformed_rows_name_file_and_line(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    with pytest.raises(RewardDataError, match=r"pairs\.jsonl: line 2: field 'chosen' must be a non-empty string"):
        load_rows(str(path), _config(tmp_path, str(path)))
    path.write_text('{"prompt": "p", "completion": "a", "warmth": "high"}\n')
    cfg = _config(tmp_path, str(path), task="labels", data={"labels": ["warmth"]})
    with pytest.raises(RewardDataError, match=r"line 1: field 'warmth' must be a finite number"):
        load_rows(str(path), cfg)
    path.write_text(
        '{"prompt": "p", "completion": "a", "warmth": 0.5}\n{"prompt": "p", "completion": "a", "warmth": 3}\n'
    )
    load_rows(str(path), cfg)  # regression (mse) takes any number
    with pytest.raises(RewardDataError, match=r"line 2: field 'warmth' is 3.0; label_loss=bce needs labels in"):
        load_rows(str(path), cfg.model_copy(update={"label_loss": "bce"}))


def test_conversational_rows_use_the_last_turns(tmp_path) -> None:
    path = tmp_path / "chat.jsonl"
    row = {
        "prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "I lost my job."}],
        "chosen": [{"role": "assistant", "content": "I'm sorry."}],
        "rejected": [{"role": "assistant", "content": "Ok."}],
    }
    user = {"role": "user", "content": "My cat died."}
    implicit = {  # TRL's implicit-prompt format: the user turn opens both conversations
        "chosen": [user, {"role": "assistant", "content": "That hurts; she was family."}],
        "rejected": [user, {"role": "assistant", "content": "Get a new one."}],
    }
    path.write_text(json.dumps(row) + "\n" + json.dumps(implicit) + "\n")
    pair, implicit_pair = load_rows(str(path), _config(tmp_path, str(path)))
    assert (pair.prompt, pair.chosen, pair.rejected) == ("I lost my job.", "I'm sorry.", "Ok.")
    assert implicit_pair.prompt == "My cat died." and implicit_pair.chosen == "That hurts; she was family."
    assert implicit_pair.group != pair.group  # split by its prompt, not all in one "" group


def test_split_keeps_groups_whole() -> None:
    rows = [PairRow(f"q{i % 10}", "a", "b", None, f"q{i % 10}") for i in range(50)]
    train, held = split_by_group(rows, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 40
    assert not {r.group for r in train} & {r.group for r in held}


def test_one_question_in_plain_and_chat_form_is_one_group_and_split_by_must_exist(tmp_path) -> None:
    """The held-out split must not see a question it trained on: the same question with a trailing space, or as a
    chat prompt with a system turn, groups with its plain form. A split_by field no row has is an error."""
    path = tmp_path / "pairs.jsonl"
    chat = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "How do I  cope?"}]
    rows = [{"prompt": p, "chosen": "a", "rejected": "b"} for p in ("How do I cope?", "How do I cope? ", chat)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len({r.group for r in load_rows(str(path), _config(tmp_path, str(path)))}) == 1
    with pytest.raises(RewardDataError, match=r"line 1: no field 'question_id' to group the held-out split by"):
        load_rows(str(path), _config(tmp_path, str(path), data={"split_by": "question_id"}))


def test_pair_metrics_report_the_length_baseline() -> None:
    pairs = [PairRow("", "long answer", "short", None, ""), PairRow("", "tiny", "much longer", None, "")]
    metrics = pair_metrics(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0]), pairs)
    assert metrics["accuracy"] == 0.5 and metrics["length_baseline"] == 0.5
    assert metrics["length_controlled_pairs"] == 1 and metrics["length_controlled_accuracy"] == 0.0


@pytest.mark.slow
def test_pairs_training_beats_chance_on_held_out_prompts(tmp_path, tiny_encoder_dir) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in preference_pairs(seed=1)))
    cfg = _config(tmp_path, str(path), model=str(tiny_encoder_dir), epochs=3, lr=2e-3, max_length=96)
    out = train_reward_model(cfg)
    report = json.loads((out / "eval.json").read_text())
    held = report["held_out"]
    assert held["pairs"] == report["eval_rows"] > 50
    assert held["accuracy"] > 0.75, held  # chance is 0.5
    assert len(report["eval_per_epoch"]) == 3 and "eval_accuracy" in report["eval_per_epoch"][-1]
    assert (out / "model.safetensors").is_file() and (out / "tensorboard").is_dir()
    assert not list(out.glob("*.bin")) and not (out / "trainer").exists()


@pytest.mark.slow
def test_label_training_gives_named_heads_combined_by_weight(tmp_path, tiny_encoder_dir) -> None:
    rows = []
    for r in preference_pairs(seed=2)[:160]:
        rows.append({"prompt": r["prompt"], "completion": r["chosen"], "warmth": 1.0, "brevity": 0.0})
        rows.append({"prompt": r["prompt"], "completion": r["rejected"], "warmth": 0.0, "brevity": 1.0})
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _config(
        tmp_path, str(path), task="labels", label_loss="bce", data={"labels": ["warmth", "brevity"]},
        model=str(tiny_encoder_dir), epochs=2, lr=2e-3, max_length=96,
    )  # fmt: skip
    out = train_reward_model(cfg)
    both = RewardModel(path=str(out), head_weights={"warmth": 2.0, "brevity": -1.0})
    assert both.heads == ("warmth", "brevity")
    prompts, completions = [rows[0]["prompt"]] * 2, [rows[0]["completion"], rows[1]["completion"]]
    heads = both.head_scores(prompts, completions)  # (2, 2) probabilities: sigmoid heads
    assert ((heads > 0) & (heads < 1)).all()
    torch.testing.assert_close(
        torch.tensor(both(prompts=prompts, completions=completions)), heads @ torch.tensor([2.0, -1.0])
    )
    assert heads[0, 0] > heads[1, 0]  # the warm reply is warmer
