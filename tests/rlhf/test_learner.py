from __future__ import annotations

from rlhf.config import load_config
from rlhf.learner import deepspeed_config


def test_deepspeed_config_follows_the_learner_config() -> None:
    cfg = load_config(None, ["learner.zero_stage=1", "learner.dtype=bf16", "learner.offload_optimizer=true"])
    ds = deepspeed_config(cfg, grad_accum=3)
    assert ds["zero_optimization"] == {"stage": 1, "offload_optimizer": {"device": "cpu"}}
    assert ds["bf16"] == {"enabled": True} and ds["gradient_accumulation_steps"] == 3
    assert deepspeed_config(load_config(None, ["learner.zero_stage=0"]), 1)["zero_optimization"] == {"stage": 0}
    assert ds["zero_force_ds_cpu_optimizer"] is False  # offload runs our torch AdamW
