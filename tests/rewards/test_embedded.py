"""The embedded reward models exist after `make setup` and learned their (held-out) exemplars."""

from __future__ import annotations

import json

from rewards.embedded import ensure_embedded_reward_models


def test_embedded_reward_models_are_trained_and_evaluated() -> None:
    folders = ensure_embedded_reward_models()  # trained by `make setup`; this returns at once
    social = json.loads((folders["embedded-social"] / "eval.json").read_text())
    assert social["held_out"]["accuracy"] > 0.9 and social["held_out"]["pairs"] > 50
    safety = json.loads((folders["embedded-safety"] / "eval.json").read_text())
    assert safety["eval_rows"] > 20 and safety["eval_per_epoch"][-1]["eval_loss"] < 0.3
