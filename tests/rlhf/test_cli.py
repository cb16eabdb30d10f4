"""The shared job command line: config validation before Ray, the job's algorithm, --resume parsing."""

from __future__ import annotations

import pytest

from rlhf import cli


def test_a_grpo_config_is_refused_by_the_ppo_job(capsys) -> None:
    assert cli.run_rl_job("ppo", "doc", ["--config", "configs/smollm2_cpu_grpo.yaml", "algorithm.name=grpo"]) == 2
    assert "use jobs/grpo.py" in capsys.readouterr().err


def test_the_job_supplies_its_algorithm_and_resume_flag(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(cli, "fit", lambda cfg, resume: calls.append((cfg.algorithm.name, resume)) or "run")
    assert cli.run_rl_job("ppo", "doc", ["--config", "configs/tiny_test.yaml", "--resume"]) == 0
    assert cli.run_rl_job("grpo", "doc", ["--config", "configs/tiny_test.yaml", "--resume", "x/step_2"]) == 0
    assert cli.run_rl_job("grpo", "doc", ["--config", "configs/tiny_test.yaml"]) == 0
    assert cli.run_rl_job("grpo", "doc", ["--config", "configs/tiny_test.yaml", "--resume", "run.steps=7"]) == 0
    assert calls == [("ppo", "latest"), ("grpo", "x/step_2"), ("grpo", None), ("grpo", "latest")]


def test_an_override_after_a_bare_resume_is_an_override(monkeypatch) -> None:
    """argparse gives "--resume run.steps=16" the override as the flag's optional value."""
    seen = []
    monkeypatch.setattr(cli, "fit", lambda cfg, resume: seen.append((cfg.run.steps, resume)) or "run")
    assert cli.run_rl_job("grpo", "doc", ["--config", "configs/tiny_test.yaml", "--resume", "run.steps=16"]) == 0
    assert seen == [(16, "latest")]


@pytest.mark.parametrize("preset", ["configs/smollm2_cpu_ppo.yaml"])
def test_ppo_preset_runs_under_the_ppo_job(monkeypatch, preset) -> None:
    seen = []
    monkeypatch.setattr(cli, "fit", lambda cfg, resume: seen.append(cfg) or "run")
    assert cli.run_rl_job("ppo", "doc", ["--config", preset]) == 0
    assert seen[0].algorithm.kl.placement == "reward" and seen[0].rollout.engine == "vllm"
