"""The embedded reward models exist after `make setup`, learned their (held-out) exemplars, are retrained when
their exemplars change, and rank an engaged reply above the generic offers RL once collapsed to."""

from __future__ import annotations

import json
from pathlib import Path

from rewards import embedded
from rewards.embedded import FINGERPRINT, ensure_embedded_reward_models
from rewards.model import RewardModel


def test_embedded_reward_models_are_trained_and_evaluated() -> None:
    folders = ensure_embedded_reward_models()  # trained by `make setup`; this returns at once
    social = json.loads((folders["embedded-social"] / "eval.json").read_text())
    assert social["held_out"]["accuracy"] > 0.9 and social["held_out"]["pairs"] > 50
    safety = json.loads((folders["embedded-safety"] / "eval.json").read_text())
    assert safety["eval_rows"] > 20 and safety["eval_per_epoch"][-1]["eval_loss"] < 0.3
    for folder in folders.values():
        assert (folder / FINGERPRINT).is_file()  # trained from today's exemplars, which ensure() just checked


def test_a_changed_exemplar_set_or_setting_retrains_only_that_model(tmp_path, monkeypatch, capsys) -> None:
    # The trainer is replaced by one that writes an empty model: this tests when ensure() trains, in milliseconds;
    # the real training runs at `make setup` and the test above checks what it produced.
    trained: list[str] = []

    def fake_train(cfg) -> Path:
        folder = Path(cfg.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"")
        trained.append(folder.name)
        return folder

    monkeypatch.setenv("PERSONAFUSE_HOME", str(tmp_path))
    monkeypatch.setattr(embedded, "train_reward_model", fake_train)
    ensure_embedded_reward_models()
    assert trained == ["social", "safety"] and "(once)" in capsys.readouterr().out
    ensure_embedded_reward_models()
    assert trained == ["social", "safety"]  # fingerprints match: nothing to do

    monkeypatch.setattr(embedded, "preference_pairs", lambda seed: [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    ensure_embedded_reward_models()
    assert trained[2:] == ["social"] and "exemplars or settings changed" in capsys.readouterr().out
    monkeypatch.setitem(embedded.TRAINING, "max_length", 96)
    ensure_embedded_reward_models()
    assert trained[3:] == ["social", "safety"]
    (tmp_path / "reward_models" / "safety" / FINGERPRINT).unlink()  # a crash between training and the stamp
    ensure_embedded_reward_models()
    assert trained[5:] == ["safety"]
    ensure_embedded_reward_models(force=True)
    assert trained[6:] == ["social", "safety"]


ENGAGED = {  # situations the exemplars do not use (persona_data's), each with a reply that takes it up
    "I have ADHD and my to-do list has 63 items on it. I freeze every morning and end up doing none of them. Where "
    "do I even start?": "Freezing in front of 63 items sounds exhausting, and it's really common with ADHD. Try "
    "picking one task that takes five minutes and do just that first. Would it help to sort the list together?",
    "I want to write a wedding toast for my brother that makes people laugh and cry. I'm a confident speaker. Help "
    "me make it a showstopper.": "What a lovely thing to do for your brother! A funny story only you know, followed "
    "by what he means to you, usually gets both the laughs and the tears. Which memories come to mind first?",
    "My husband and I disagree about moving his mother into a care home. Every conversation ends in tears. How do we "
    "talk about it?": "That's such a painful decision, and it makes sense that it brings you both to tears. It can "
    "help to pick a calm moment and start from what you both want for her. What worries you most about it?",
    "My mates always make fun of my accent. It's banter, I know, but lately it has started to get to me and I want "
    "it to stop.": "It's completely fair to want it to stop, even if it started as banter. You could tell the one "
    "you're closest to, privately, that it has started to bother you. How do you think he'd react?",
}
GENERIC = ("How can I help?", "Can I? How can I help?", "Can you? How can I help?", "Can I help?")  # PPO's collapse


def test_social_reward_model_ranks_an_engaged_reply_above_generic_offers() -> None:
    model = RewardModel("embedded-social")
    margins = []
    for prompt, reply in ENGAGED.items():
        engaged, *generic = model([prompt] * (1 + len(GENERIC)), [reply, *GENERIC])
        assert engaged > max(generic), (prompt, engaged, generic)
        margins.append(engaged - max(generic))
    # The model trained before generic offers were among the rejected replies ranked them 0.3-0.6 below (0.46 mean)
    assert sum(margins) / len(margins) > 1.0, margins
