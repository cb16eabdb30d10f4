"""Forward+backward cost of the persona mixture on SmolLM2-135M (batch 4 x 256 tokens, fp32, CPU).

Variants, timed round-robin in one process so machine noise hits them alike (medians over --repeats):
  a  base + one PEFT LoRA of rank r                 (the cost floor of any adapter)
  b  PersonaFuse fused mixture, 10 experts of rank r, default top-2 routing
  b_dense  the same mixture with all 10 experts active (no top-k)
  c  a naive loop over the 10 experts (one LoRA pass each), dense weights
  d  PEFT X-LoRA with the same 10 experts
Goals: b/a <= 1.15, d/b >= 2. Prints one JSON line last.

    python bench/mixture.py [--repeats 5] [--rank 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import XLoraConfig, get_peft_model

from policies import PersonaConfig, PersonaFusePolicy, RouterConfig
from policies.embedded import embedded_model_dir
from policies.export import expert_adapter, lora_config
from policies.mixture import LoRAMixtureLinear, fused_mixture_delta, naive_mixture_delta
from policies.policy import load_base_model

BATCH, SEQ = 4, 256


def fwd_bwd_step(forward: Callable[[torch.Tensor], torch.Tensor], params: list[torch.nn.Parameter]):
    def step(input_ids: torch.Tensor) -> float:
        for p in params:
            p.grad = None
        start = time.perf_counter()
        logits = forward(input_ids)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten()).backward()
        return time.perf_counter() - start

    return step


def mixture_variant(policy: PersonaFusePolicy, top_k: int | None, delta_fn) -> Callable[[torch.Tensor], float]:
    weights = torch.softmax(torch.randn(BATCH, len(policy.experts)), -1)
    if top_k is not None:
        kept, idx = weights.topk(top_k, -1)
        weights = torch.zeros_like(weights).scatter(-1, idx, kept / kept.sum(-1, keepdim=True))

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        LoRAMixtureLinear.delta_fn = staticmethod(delta_fn)
        try:
            with policy.mixture(weights):
                return policy.model(input_ids=input_ids, use_cache=False).logits
        finally:
            LoRAMixtureLinear.delta_fn = staticmethod(fused_mixture_delta)

    return fwd_bwd_step(forward, [p for p in policy.parameters() if p.requires_grad])


def peft_variant(model) -> Callable[[torch.Tensor], float]:
    return fwd_bwd_step(
        lambda ids: model(input_ids=ids, use_cache=False).logits, [p for p in model.parameters() if p.requires_grad]
    )


def build_xlora(base_dir: str, policy: PersonaFusePolicy, workdir: Path):
    """X-LoRA over the policy's 10 experts (each saved as the standard PEFT folder it already is), experts trainable.

    PEFT 0.21 loads adapter i under the name str(i), so the keys must be "0".."9"; it refuses use_cache=True
    and leaves the model in eval mode.
    """
    adapters = {}
    for e, name in enumerate(policy.experts):
        expert_adapter(policy, e).save(workdir / name)
        adapters[str(e)] = str(workdir / name)
    base = load_base_model(base_dir)
    base.config.use_cache = False
    config = XLoraConfig(
        task_type="CAUSAL_LM",
        hidden_size=base.config.hidden_size,
        adapters=adapters,
        xlora_depth=1,
        use_trainable_adapters=True,  # like ours: the experts train, not only the classifier
    )
    return get_peft_model(base, config).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    base_dir = str(embedded_model_dir())
    config = PersonaConfig(base_model=base_dir, rank=args.rank, router=RouterConfig(top_k=None))
    policy = PersonaFusePolicy.from_base(config).train()
    with torch.no_grad():
        for layer in policy.mixture_layers.values():
            layer.lora_B.normal_(std=0.01)
    policy.router.requires_grad_(False)  # the benchmark times the adapters; routing is outside the loop

    lora = get_peft_model(load_base_model(base_dir), lora_config(base_dir, config.target_modules, args.rank, 16.0))
    variants = {
        "a": peft_variant(lora),
        "b": mixture_variant(policy, 2, fused_mixture_delta),
        "b_dense": mixture_variant(policy, None, fused_mixture_delta),
        "c": mixture_variant(policy, None, naive_mixture_delta),
    }
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            variants["d"] = peft_variant(build_xlora(base_dir, policy, Path(tmp)))
        except Exception as exc:  # reported in the JSON line, not hidden
            errors["d"] = f"{type(exc).__name__}: {exc}"
        input_ids = torch.randint(0, policy.model.config.vocab_size, (BATCH, SEQ))
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.repeats + 1):  # round 0 warms up
            names = list(variants)
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # each round starts elsewhere
                step = variants[name]
                try:
                    seconds = step(input_ids)
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    del variants[name], times[name]
                    continue
                if round_ > 0:
                    times[name].append(seconds)
            print(f"round {round_}: " + ", ".join(f"{n}={t[-1]:.2f}s" for n, t in times.items() if t), flush=True)

    median = {name: statistics.median(t) for name, t in times.items() if t}
    pairs = (("b", "a"), ("b_dense", "a"), ("c", "b"), ("c", "b_dense"), ("d", "b"))
    ratio = {f"{x}/{y}": median[x] / median[y] for x, y in pairs if {x, y} <= median.keys()}  # what both ran
    result = {
        "bench": "mixture",
        "model": "SmolLM2-135M-Instruct",
        "batch": BATCH,
        "seq": SEQ,
        "rank": args.rank,
        "experts": len(policy.experts),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "ratios": {k: round(v, 3) for k, v in ratio.items()},
        "goals_met": {"b/a<=1.15": ratio.get("b/a", 9) <= 1.15, "d/b>=2": ratio.get("d/b", 0) >= 2},
        "errors": errors,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
