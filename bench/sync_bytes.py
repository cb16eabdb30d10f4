"""Bytes each RL weight sync carries, against the full fp32 model, for the GRPO presets' policies.

Issue 3's goal: sync bytes <= 2% of the model. Per preset, two variants:
  all       the default: RL trains every expert's A and B and the router; each sync carries all of them
  lora_fa   policy.train_lora_a=false: A stays as the run started, so after the first sync only B and the router
            travel (the first sync of a run carries A too)
Experts travel in the preset's rollout.sync_dtype, the router in its own precision (rlhf/sync.py).

  smollm2_cpu   configs/smollm2_cpu_grpo.yaml on the embedded SmolLM2-135M: a real snapshot of the real policy
  qwen2.5-7b    configs/qwen2.5-7b_8gpu_grpo.yaml's policy on Qwen2.5-7B's published shapes (hidden 3584, 28 layers,
                intermediate 18944, 28 heads / 4 KV heads, vocab 152064), built on the meta device (no weights here)

Deterministic (bytes, not time); one JSON line last on stdout.

    python bench/sync_bytes.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from policies.config import PersonaConfig
from policies.embedded import embedded_model_dir
from policies.policy import PersonaFusePolicy
from rlhf.build import build_policy
from rlhf.config import JobConfig, load_config
from rlhf.sync import adapter_tensors, snapshot

GOAL = 0.02
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QWEN25_7B = Qwen2Config(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152064, tie_word_embeddings=False,
)  # fmt: skip


def sync_dtype(cfg: JobConfig) -> torch.dtype | None:
    return torch.bfloat16 if cfg.rollout.sync_dtype == "bf16" else None


def fractions(rank: int, model_bytes: int, all_bytes: int, fa_bytes: int) -> dict[str, object]:
    """Sync bytes over model bytes, and the largest expert rank that meets the goal (the bytes grow ~ with rank)."""
    fraction = {"all": all_bytes / model_bytes, "lora_fa": fa_bytes / model_bytes}
    return {
        "rank": rank,
        "model_bytes_fp32": model_bytes,
        "sync_bytes": {"all": all_bytes, "lora_fa": fa_bytes},
        "sync_fraction": {k: round(f, 4) for k, f in fraction.items()},
        "largest_rank_within_2pct": {k: int(rank * GOAL / f) for k, f in fraction.items()},
    }


def smollm2_cpu() -> dict[str, object]:
    """Real snapshots of the CPU preset's policy, as the learner publishes them."""
    cfg = load_config(CONFIGS / "smollm2_cpu_grpo.yaml", [])
    policy = build_policy(cfg)
    base = sum(p.numel() * 4 for name, p in policy.model.named_parameters() if ".lora_" not in name)
    every = snapshot(policy, 0, sync_dtype(cfg)).nbytes
    policy.set_trainable(lora_a=False)
    return fractions(cfg.policy.rank, base, every, snapshot(policy, 1, sync_dtype(cfg), trained_only=True).nbytes)


def qwen25_7b() -> dict[str, object]:
    """The 7B preset's mixture on Qwen2.5-7B's shapes, on the meta device: sizes only, counted as snapshot would."""
    cfg = load_config(CONFIGS / "qwen2.5-7b_8gpu_grpo.yaml", [])
    p = cfg.policy
    with torch.device("meta"):
        model = Qwen2ForCausalLM(QWEN25_7B)
        tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())  # unused for sizes; the policy wants one
        persona = PersonaConfig(
            base_model="meta", experts=p.experts, rank=p.rank, alpha=p.alpha, target_modules=p.target_modules,
            router=p.router,
        )  # fmt: skip
        policy = PersonaFusePolicy(model, tokenizer, persona)
    base = sum(t.numel() * 4 for name, t in policy.model.named_parameters() if ".lora_" not in name)
    expert_size = torch.finfo(sync_dtype(cfg) or torch.float32).bits // 8

    def nbytes(names: list[str]) -> int:
        tensors = adapter_tensors(policy)
        return sum(tensors[n].numel() * (expert_size if ".lora_" in n else 4) for n in names)

    names = list(adapter_tensors(policy))
    return fractions(p.rank, base, nbytes(names), nbytes([n for n in names if not n.endswith(".lora_A")]))


def main() -> None:
    result = {"smollm2_cpu": smollm2_cpu(), "qwen2.5-7b_8gpu": qwen25_7b()}
    for preset, row in result.items():
        print(f"[sync_bytes] {preset}: {row['sync_fraction']}")
    result["goal_sync_fraction<=0.02"] = {
        k: {v: f <= GOAL for v, f in r["sync_fraction"].items()} for k, r in result.items()
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
