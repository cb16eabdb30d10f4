"""The embedded reward models, trained once at setup from the project's own exemplars (rewards/exemplars.py).

    python -m rewards.embedded          # what `make setup` runs; seconds when the models exist

* ``embedded-social``: a Bradley-Terry reward model on the packaged all-MiniLM-L6-v2 (warm, fitting replies over
  dismissive, cold, preachy, off-topic, brushed-off, generic, phrase-repeating, over-refusing or unsafe ones);
* ``embedded-safety``: a sigmoid "unsafe" classifier on the same encoder (compliance with harm or encouragement of
  self-harm = 1; supportive refusals and ordinary replies = 0).

Both land in ``$PERSONAFUSE_HOME/reward_models/`` (atomically) with their eval.json. Training is seeded; on the
2-core CPU machine it takes a few minutes once, and again whenever the exemplars or the training settings change
(each folder records a fingerprint of what it was trained from, so a cached model never outlives its data).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from policies.atomic_io import atomic_write_text
from rewards.exemplars import preference_pairs, safety_examples
from rewards.model import embedded_reward_dir
from rewards.training import RewardDataConfig, RewardTrainingConfig, train_reward_model

FINGERPRINT = "fingerprint.txt"  # sha256 of the rows and settings a model was trained from
TRAINING = {"epochs": 2, "lr": 5e-5, "batch_size": 16, "max_length": 128, "seed": 0, "logging_steps": 20}


def embedded_configs(data_dir: Path) -> dict[str, RewardTrainingConfig]:
    """The two training configs, reading the exemplar files written into ``data_dir``."""
    return {
        "embedded-social": RewardTrainingConfig(
            task="pairs",
            output_dir=str(embedded_reward_dir("embedded-social")),
            data=RewardDataConfig(train=str(data_dir / "pairs.jsonl"), eval_fraction=0.2),
            **TRAINING,
        ),
        "embedded-safety": RewardTrainingConfig(
            task="labels",
            label_loss="bce",
            output_dir=str(embedded_reward_dir("embedded-safety")),
            data=RewardDataConfig(train=str(data_dir / "safety.jsonl"), labels=("unsafe",), eval_fraction=0.2),
            **{**TRAINING, "epochs": 4, "lr": 2e-4},  # fewer rows than pairs: more passes, a larger step
        ),
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fingerprint(cfg: RewardTrainingConfig) -> str:
    """sha256 of what a model learns from: its training rows and its settings, not where they lie (the rows are
    written to a fresh temporary folder each time) nor where the model goes."""
    digest = hashlib.sha256(Path(cfg.data.train).read_bytes())
    digest.update(cfg.model_dump_json(exclude={"output_dir": True, "data": {"train": True}}).encode())
    return digest.hexdigest()


def ensure_embedded_reward_models(force: bool = False) -> dict[str, Path]:
    """Trains whichever embedded reward model is missing, or was trained from other exemplars or settings than the
    current ones (its ``fingerprint.txt`` differs), or all with ``force``; returns their folders."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_jsonl(data_dir / "pairs.jsonl", preference_pairs(seed=0))
        write_jsonl(data_dir / "safety.jsonl", safety_examples(seed=0))
        folders = {}
        for name, cfg in embedded_configs(data_dir).items():
            folder, wanted = Path(cfg.output_dir), fingerprint(cfg)
            stamp = folder / FINGERPRINT
            if not (folder / "model.safetensors").is_file():
                reason = "once"
            elif force or not stamp.is_file() or stamp.read_text().strip() != wanted:
                reason = "forced" if force else "its exemplars or settings changed"
            else:
                reason = None
            if reason:
                print(f"training the embedded reward model {name} ({reason}) -> {folder}", flush=True)
                train_reward_model(cfg)
                atomic_write_text(stamp, wanted + "\n")  # after the folder is complete: a crash retrains
            folders[name] = folder
    return folders


if __name__ == "__main__":
    for name, folder in ensure_embedded_reward_models().items():
        print(f"{name}: {folder}")
