"""Job config: presets load and validate; bad keys, types and combinations fail before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from rlhf.config import ConfigError, JobConfig, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def schema_of(path: Path) -> type:
    """Each preset family's config schema, by file-name prefix (RL presets are the rest)."""
    from policies.adapter_sft import AdapterSFTConfig
    from policies.persona_synthesis import SynthesisConfig
    from policies.router_training import RouterTrainingConfig
    from rewards.training import RewardTrainingConfig
    from rlhf.pipeline import PipelineConfig

    prefixes = {"reward_": RewardTrainingConfig, "router_": RouterTrainingConfig, "adapters_": AdapterSFTConfig,
                "persona_data_": SynthesisConfig, "pipeline_": PipelineConfig}  # fmt: skip
    return next((schema for prefix, schema in prefixes.items() if path.name.startswith(prefix)), JobConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_validates(path: Path) -> None:
    schema = schema_of(path)
    cfg = load_config(path, schema=schema)
    if schema is JobConfig:
        assert cfg.run.steps >= 1
    if path.name.startswith("pipeline_"):
        from rlhf.pipeline import stage_configs

        stage_configs(cfg)  # every stage of the pipeline preset validates too
    assert path.read_text().startswith("#"), "a preset opens with a comment: purpose, command, hardware, result"


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(None, ["run.steps=3", "rollout.temperature=0.7", "policy.router.top_k=null", "data.path=x.jsonl"])
    assert (cfg.run.steps, cfg.rollout.temperature, cfg.policy.router.top_k, cfg.data.path) == (3, 0.7, None, "x.jsonl")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.smaples=3"], "did you mean 'samples_per_prompt'"),
        (["learner.zero_stage=5"], "learner.zero_stage"),
        (["run.steps=many"], "run.steps"),
        (["rollout.samples_per_prompt=1"], "samples_per_prompt must be >= 2"),
        (["data.prompts_per_step=3", "rollout.samples_per_prompt=3", "learner.num_learners=2"], "divide evenly"),
        (["algorithm.name=dpo"], "algorithm.name"),
        (["rewards.components=[{name: validaton, weight: 1}]"], "validation"),
        (["steps"], "key.path=value"),
        (["learner.offload_optimizer=true", "learner.zero_stage=0"], "offload_optimizer needs"),
        (["learner.gradient_checkpointing=true", "learner.shared_prompt_forward=true"], "keep no KV cache"),
        (["rollout.gpus_per_actor=0.5", "rollout.vllm_gpu_memory_utilization=0.85"], "at most 0.5"),
        (["rollout.one_step_off_policy=true", "algorithm.rollout_correction.level=none"], "nothing weights"),
        (["algorithm.rollout_correction.clip_max=0.5"], "rollout_correction.clip_max"),
        (["run.eval_every=-1"], "run.eval_every"),
        (["rollout.max_new_tokens=32", "algorithm.overlong.buffer=40"], "overlong.buffer \\(40\\) is longer"),
        (["algorithm.overlong.penalty=0"], "overlong.penalty"),
        (["algorithm.name=ppo", "algorithm.advantage=rloo"], "critic-free estimator"),
        (["algorithm.advantage=rloo", "algorithm.normalize=batch"], "would be ignored"),
        (["algorithm.advantage=reinforce++", "algorithm.scale_by_std=false"], "would be ignored"),
        (["algorithm.name=ppo", "algorithm.normalize=batch"], "algorithm.normalize would be ignored"),
        (["algorithm.name=ppo", "algorithm.scale_by_std=false"], "scale_by_std would be ignored"),
        (["algorithm.scale_by_std=false", "algorithm.normalize=batch"], "normalize would be ignored"),
        (
            ["algorithm.lam=0.9", "algorithm.whiten_advantages=false"],
            "algorithm.lam, algorithm.whiten_advantages would be ignored",
        ),
        (["algorithm.gamma=0.9"], "gamma would be ignored with name=grpo, advantage=grpo"),
        (["algorithm.kl.estimator=k1"], "zero expected gradient"),
        (["algorithm.kl.coef=0", "algorithm.kl.target=0.1"], "target needs coef > 0"),
        (["rollout.top_p=0.9"], "renormalised over the nucleus"),
    ],
)
def test_bad_config_is_a_clear_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_fields_an_algorithm_reads_may_be_set() -> None:
    """The combinations the ignored-field checks must keep allowing."""
    load_config(None, ["algorithm.name=ppo", "algorithm.gamma=0.9", "algorithm.lam=0.9", "algorithm.vf_coef=1"])
    load_config(None, ["algorithm.advantage=reinforce++", "algorithm.gamma=0.9"])
    load_config(None, ["algorithm.scale_by_std=false", "algorithm.normalize=group"])  # Dr.GRPO: normalize at default
    load_config(None, ["algorithm.kl.estimator=k1", "algorithm.kl.placement=reward", "algorithm.kl.target=0.1"])
    load_config(None, ["rollout.top_p=0.9", "algorithm.rollout_correction.level=none"])
    load_config(None, ["rollout.top_p=0.9", "rollout.engine=hf"])  # its sampling log-probs are not renormalised


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  steps: 2\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(ValueError, match="frozen"):
        cfg.run.steps = 5


def test_every_field_is_documented() -> None:
    def walk(model: type[BaseModel]) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                missing += walk(field.annotation)
        return missing

    assert walk(JobConfig) == []


def test_shared_prompt_forward_follows_gradient_checkpointing_unless_set() -> None:
    assert load_config(None, []).learner.shares_prompts
    assert not load_config(None, ["learner.gradient_checkpointing=true"]).learner.shares_prompts
    assert not load_config(None, ["learner.shared_prompt_forward=false"]).learner.shares_prompts


def test_rewards_overlap_the_scoring_pass_when_the_learners_are_on_gpus_unless_set() -> None:
    configs = Path(__file__).parents[2] / "configs"
    assert not load_config(configs / "smollm2_cpu_grpo.yaml").overlaps_rewards  # they would share 2 cores
    assert load_config(configs / "qwen2.5-7b_8gpu_grpo.yaml").overlaps_rewards
    assert load_config(None, ["placement.overlap_rewards=true"]).overlaps_rewards
    assert not load_config(None, ["learner.gpus_per_learner=1", "placement.overlap_rewards=false"]).overlaps_rewards
