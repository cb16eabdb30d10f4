"""The full pipeline on the tiny model: every stage runs once, writes its folder, and is skipped on a rerun."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhf.pipeline import PipelineConfig, rl_resume, run_pipeline, stage_configs


def _config(tmp_path, tiny_model_dir) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "output_dir": str(tmp_path / "pipe"),
        "base_model": str(tiny_model_dir),
        "persona_data": {"max_situations": 2, "think_tokens": 8, "reply_tokens": 10, "min_words": 1,
                         "max_words": 500, "max_repeated_trigram_share": 1.0, "batch_size": 20,
                         "cut_replies": "keep"},  # a random model's 10 tokens never end a sentence
        "adapters": {"epochs": 1, "batch_size": 10, "max_tokens": 512},
        "router": {"epochs": 5},
        "rl_config": "configs/tiny_test.yaml",
        "rl": ["run.steps=1", "rewards.components=[{name: length, weight: 1}]", "rewards.safety=[]",
               "algorithm.pole_anchor.coef=1.0", "algorithm.pole_anchor.pairs_per_step=2"],
        "evaluation": {"sections": ["traits", "win_rate", "routing"], "win_rate_reward": "length",
                       "max_win_rate_prompts": 2, "max_new_tokens": 4},
    })  # fmt: skip


def test_every_stage_config_is_validated_up_front(tmp_path, tiny_model_dir) -> None:
    configs = stage_configs(_config(tmp_path, tiny_model_dir))
    assert list(configs) == ["persona_data", "adapters", "router", "rl", "evaluation"]
    assert configs["router"].init_from.endswith("adapters/policy")
    assert configs["rl"].policy.init_from.endswith("router/policy")
    assert configs["rl"].algorithm.pole_anchor.data_dir == configs["adapters"].data_dir  # stage 1a's replies
    assert configs["evaluation"].trait_references == {"after stage 1": str(tmp_path / "pipe/adapters/policy")}
    bad = _config(tmp_path, tiny_model_dir).model_copy(update={"adapters": {"epoch": 1}})
    with pytest.raises(ValueError, match="epoch"):
        stage_configs(bad)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"router": {"router": {"top_k": 3}}}, r"router\.router: set by the pipeline itself"),
        ({"adapters": {"output_dir": "x", "data_dir": "y"}}, r"adapters\.data_dir, adapters\.output_dir: set by"),
        ({"rl": ["rewards.components=[{name: reward_model, weight: 1, options: {path: /no/such/rm}}]"]}, "/no/such/rm"),
        ({"evaluation": {"win_rate_reward": "reward_model", "win_rate_options": {"path": "/no/rm"}}}, "/no/rm"),
        ({"evaluation": {"win_rate_reward": "reward_modle"}}, "win_rate_reward='reward_modle'"),
    ],
)
def test_settings_the_pipeline_would_ignore_or_that_fail_later_fail_up_front(
    tmp_path, tiny_model_dir, update: dict, message: str
) -> None:
    """Keys the pipeline wires itself, and reward folders or names that would only fail when RL or the evaluation
    starts (after stage 1's minutes), stop it before any stage."""
    with pytest.raises(ValueError, match=message):
        stage_configs(_config(tmp_path, tiny_model_dir).model_copy(update=update))


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_resumes(ray_local, tmp_path, tiny_model_dir) -> None:
    cfg = _config(tmp_path, tiny_model_dir)
    summary = run_pipeline(cfg)
    assert [s["status"] for s in summary.values()] == ["ran"] * 5
    root = tmp_path / "pipe"
    outputs = (
        "persona_data/manifest.json", "adapters/policy/persona_config.json", "router/router_report.json",
        "rl/policy/persona_config.json", "evaluation/report.json", "evaluation/routing_heatmap.png",
    )  # fmt: skip
    for path in outputs:
        assert (root / path).is_file(), path
    metrics = json.loads((root / "rl/metrics.jsonl").read_text().splitlines()[0])
    assert metrics["pole_anchor/loss"] > 0  # RL kept stage 1's pole contrast in its loss
    report = json.loads((root / "evaluation/report.json").read_text())
    assert len(report["trait_directions"]["situational"]) == 10
    again = run_pipeline(cfg)
    assert [s["status"] for s in again.values()] == ["skipped"] * 5


def test_an_interrupted_rl_stage_resumes_from_its_latest_checkpoint(tmp_path) -> None:
    run_dir = tmp_path / "rl"
    (run_dir / "checkpoints" / "step_4").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    assert rl_resume(run_dir) == "latest" and run_dir.exists()
    shutil.rmtree(run_dir / "checkpoints")  # stopped before its first checkpoint: start over
    assert rl_resume(run_dir) is None and not run_dir.exists()
    assert rl_resume(run_dir) is None  # never started
