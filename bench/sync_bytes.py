"""Bytes each RL weight sync carries, against the full fp32 model, for the GRPO presets' policies.

Issue 3's goal: sync bytes <= 2% of the model. Per preset, what one sync after the first carries, by what travels
and how:
  all / lora_fa     every expert's A and B, or (policy.train_lora_a=false, LoRA-FA) only B; the router always
  bf16 / int8 / int4  the experts as a bf16 copy (rollout.sync_dtype=bf16, sync_delta=none), or as int8 / int4
                    differences from what the rollouts hold (rollout.sync_delta; 4 bytes of scale per 128 values)
The router travels in its own precision (rlhf/sync.py). Each run's first sync is complete (A, B, router) in
rollout.sync_dtype.

Fidelity (smollm2_cpu only): 8 simulated optimizer steps on the real policy (every expert element moves by about
the preset's lr, as AdamW moves it), then the mean and max |rollout copy - learner weight| for each encoding:
the bf16 copy's rounding against the int8 / int4 error-feedback residual.

  smollm2_cpu   configs/smollm2_cpu_grpo.yaml on the embedded SmolLM2-135M: real snapshots of the real policy
  qwen2.5-7b    configs/qwen2.5-7b_8gpu_grpo.yaml's policy on Qwen2.5-7B's published shapes (hidden 3584, 28 layers,
                intermediate 18944, 28 heads / 4 KV heads, vocab 152064), built on the meta device (no weights here),
                counted as rlhf/sync.py would encode them

Deterministic (bytes and seeded simulated updates, not time); one JSON line last on stdout.

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
from rlhf.config import load_config
from rlhf.sync import DELTA_GROUP, SyncedAdapters, adapter_tensors, delta_snapshot, snapshot

GOAL = 0.02
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QWEN25_7B = Qwen2Config(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152064, tie_word_embeddings=False,
)  # fmt: skip


ENCODINGS = {"bf16": None, "int8": 8, "int4": 4}  # None: a bf16 copy


def encoded_bytes(numel: int, bits: int | None) -> int:
    """What one expert tensor of ``numel`` values costs on the wire (as QuantizedDelta.nbytes counts it)."""
    if bits is None:
        return numel * 2
    groups = -(-numel // DELTA_GROUP)
    return groups * DELTA_GROUP * bits // 8 + groups * 4


def fractions(rank: int, model_bytes: int, experts: dict[str, int], router_bytes: int) -> dict[str, object]:
    """Sync bytes over model bytes per variant, and the largest expert rank that meets the goal (the expert bytes
    grow ~ with rank). ``experts``: tensor name -> numel."""
    sync = {}
    for fa, names in (("all", list(experts)), ("lora_fa", [n for n in experts if n.endswith(".lora_B")])):
        for encoding, bits in ENCODINGS.items():
            sync[f"{fa}_{encoding}"] = router_bytes + sum(encoded_bytes(experts[n], bits) for n in names)
    fraction = {k: b / model_bytes for k, b in sync.items()}
    return {
        "rank": rank,
        "model_bytes_fp32": model_bytes,
        "sync_bytes": sync,
        "sync_fraction": {k: round(f, 4) for k, f in fraction.items()},
        "largest_rank_within_2pct": {k: int(rank * GOAL / f) for k, f in fraction.items()},
    }


def expert_numels(policy: PersonaFusePolicy) -> tuple[dict[str, int], int]:
    tensors = adapter_tensors(policy)
    router = sum(t.numel() * t.element_size() for n, t in tensors.items() if ".lora_" not in n)
    return {n: t.numel() for n, t in tensors.items() if ".lora_" in n}, router


@torch.no_grad()
def fidelity(policy: PersonaFusePolicy, lr: float, steps: int = 8) -> dict[str, dict[str, float]]:
    """Simulated updates (each element moves by lr * N(0, 1) clipped to 3, about AdamW's step size), synced each
    step; then the rollout copy's error against the learner's weights per encoding."""
    gen = torch.Generator().manual_seed(0)
    for layer in policy.mixture_layers.values():  # stage 1 leaves B non-zero; a fresh mixture's B is zero
        layer.lora_B.normal_(0, 0.02, generator=gen)
    first = snapshot(policy, 0, torch.bfloat16)
    copies = {bits: SyncedAdapters() for bits in (8, 4)}
    for copy in copies.values():
        copy.apply(first)
    for version in range(1, steps + 1):
        for layer in policy.mixture_layers.values():
            for t in (layer.lora_A, layer.lora_B):
                t.add_(lr * torch.randn(t.shape, generator=gen).clamp(-3, 3))
        for bits, copy in copies.items():
            copy.apply(delta_snapshot(policy, version, copy, bits))
    truth = {n: t.detach() for n, t in adapter_tensors(policy).items() if ".lora_" in n}
    held = {"bf16": {n: t.bfloat16().float() for n, t in truth.items()}}
    held.update({f"int{bits}": copy.experts for bits, copy in copies.items()})
    result = {}
    for encoding, tensors in held.items():
        errors = torch.cat([(tensors[n] - t).abs().flatten() for n, t in truth.items()])
        result[encoding] = {"mean_abs_error": float(errors.mean()), "max_abs_error": float(errors.max())}
    return result


def smollm2_cpu() -> dict[str, object]:
    """The CPU preset's real policy: its tensors' sizes, and the fidelity of each encoding on it."""
    cfg = load_config(CONFIGS / "smollm2_cpu_grpo.yaml", [])
    policy = build_policy(cfg)
    base = sum(p.numel() * 4 for name, p in policy.model.named_parameters() if ".lora_" not in name)
    row = fractions(cfg.policy.rank, base, *expert_numels(policy))
    row["fidelity_after_8_steps_at_lr"] = {"lr": cfg.learner.lr, **fidelity(policy, cfg.learner.lr)}
    return row


def qwen25_7b() -> dict[str, object]:
    """The 7B preset's mixture on Qwen2.5-7B's shapes, on the meta device: sizes only."""
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
    return fractions(p.rank, base, *expert_numels(policy))


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
