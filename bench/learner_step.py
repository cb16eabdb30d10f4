"""The learner's share of a GRPO step, with and without the shared prompt forward, side by side in one process.

One real Learner (DeepSpeed engine, configs/smollm2_cpu_grpo.yaml: bf16-mixed, ZeRO-2, micro-batch 8) on the
embedded SmolLM2-135M, one batch shaped like the preset's steps: 4 builtin prompts x G=4 samples x 48 response
tokens (random tokens: the time does not depend on which). Per round, in turn:
  shared     learner.shared_prompt_forward=true (the default): each prompt runs once for its G rows, its KV cache
             gathered out to them, in the reference pass (score) and the update
  unshared   learner.shared_prompt_forward=false: every row runs its own prompt
  features   the frozen base over the batch's prompts, one pass per micro-batch: what the update ran before the
             router's features travelled with the batch (it re-read every prompt to route), now not run at all
Medians over the rounds after the first (warm-up); one JSON line last on stdout.

    python bench/learner_step.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

from rlhf.batch import RolloutBatch
from rlhf.build import tokenize_prompts
from rlhf.config import load_config
from rlhf.learner import Learner, MinibatchCounts, init_distributed
from rlhf.prompts import load_prompts

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_cpu_grpo.yaml"
PROMPTS, G, RESPONSE_TOKENS = 4, 4, 48


def log(message: str) -> None:
    print(f"[learner_step] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(learner: Learner, seed: int = 0) -> RolloutBatch:
    """The preset's batch shape through the learner's own routing; advantages and responses are random."""
    cfg = learner.cfg
    records = load_prompts(cfg.data.path, system_prompt=cfg.data.system_prompt)[:PROMPTS]
    routed = learner.route(records)
    _, ids, mask = tokenize_prompts(learner.policy, records, cfg.data.max_prompt_tokens)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(PROMPTS).repeat_interleave(G)
    responses = torch.randint(100, 10_000, (PROMPTS * G, RESPONSE_TOKENS), generator=gen)
    batch = RolloutBatch(
        prompt_ids=ids[rows], prompt_mask=mask[rows], response_ids=responses, response_mask=torch.ones_like(responses),
        group_ids=rows, routing_weights=routed.weights[rows], rollout_logprobs=torch.zeros(responses.shape),
        truncated=torch.ones(len(rows), dtype=torch.bool), situation_features=routed.features[rows],
    )  # fmt: skip
    batch.advantages = torch.randn(PROMPTS * G, 1, generator=gen).expand(-1, RESPONSE_TOKENS).contiguous()
    return batch


def features_pass(learner: Learner, batch: RolloutBatch) -> None:
    """What the update ran before the features travelled with the batch: the frozen base over each micro-batch's
    prompts."""
    size = learner.cfg.learner.micro_batch_size
    for i in range(0, len(batch), size):
        learner.policy.situation_features(batch.prompt_ids[i : i + size], batch.prompt_mask[i : i + size])


def timed(fn):
    """(seconds, result) of ``fn()``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of all variants; the first is a warm-up")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (the first is dropped)")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    init_distributed(0, 1, "127.0.0.1", free_port())
    configs = {
        name: load_config(CONFIG, [f"learner.shared_prompt_forward={str(shared).lower()}"])
        for name, shared in (("shared", True), ("unshared", False))
    }
    learner = Learner(configs["shared"], world_size=1)
    batch = make_batch(learner)
    counts = [MinibatchCounts(tokens=float(batch.response_mask.sum()), seqs=float(len(batch)))]
    times: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        order = list(configs.items())
        for name, cfg in order if round_ % 2 else order[::-1]:  # alternate which variant runs first (README)
            learner.cfg = cfg  # the only difference between the variants
            scored = batch.select(slice(None))
            seconds, columns = timed(partial(learner.score, scored))
            times.setdefault(f"{name}/ref", []).append(seconds)
            scored.ref_logprobs = columns["ref_logprobs"]
            times.setdefault(f"{name}/update", []).append(timed(partial(learner.update, scored, counts))[0])
        seconds, _ = timed(partial(features_pass, learner, batch))
        times.setdefault("features", []).append(seconds)
        log(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    med = {key: round(statistics.median(values[1:]), 3) for key, values in times.items()}
    print(
        json.dumps(
            {
                "bench": "learner_step",
                "medians_s": med,
                "update_speedup_shared": round(med["unshared/update"] / med["shared/update"], 3),
                "ref_speedup_shared": round(med["unshared/ref"] / med["shared/ref"], 3),
                "features_pass_s": med["features"],
                "per_round_s": {key: [round(v, 3) for v in values] for key, values in times.items()},
                "settings": {
                    "prompts": PROMPTS,
                    "G": G,
                    "response_tokens": RESPONSE_TOKENS,
                    "rounds": args.rounds,
                    "prompt_tokens": batch.prompt_mask.sum(-1).tolist()[::G],
                    "config": CONFIG.name,
                    "learner": learner.cfg.learner.model_dump(include={"dtype", "zero_stage", "micro_batch_size"}),
                    "threads": torch.get_num_threads(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
