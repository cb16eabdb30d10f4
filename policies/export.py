"""Saving, loading and folding the persona mixture in PEFT's standard LoRA format.

Each expert is a plain PEFT LoRA folder, so ``PeftModel.from_pretrained(base, dir/experts/<name>)`` reproduces
the policy with a one-hot weight on that expert. ``fold`` turns a weighted mixture into ONE LoRA of rank k*r
(the active experts' A stacked; their B scaled by s * w_e and stacked) whose output equals the mixture exactly;
that is how vLLM serves a persona without any change to vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from torch import Tensor

from policies.atomic_io import atomic_dir
from policies.router import top_k_renormalise

if TYPE_CHECKING:
    from policies.policy import PersonaFusePolicy

ADAPTER_WEIGHTS = "adapter_model.safetensors"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's max_lora_rank accepts

ExpertTensors = dict[str, tuple[Tensor, Tensor]]  # module path -> (A (E, r, d_in), B (E, d_out, r))


@dataclass(frozen=True)
class LoRAAdapter:
    """One standard LoRA adapter in memory: PEFT config + tensors keyed as PEFT saves them."""

    config: LoraConfig
    tensors: dict[str, Tensor]

    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """A PEFT adapter folder; ``dtype`` casts the tensors (e.g. to the bf16 a serving engine computes in)."""
        with atomic_dir(path) as tmp:
            self.config.save_pretrained(str(tmp))
            save_file({k: v.to(dtype).contiguous() for k, v in self.tensors.items()}, str(tmp / ADAPTER_WEIGHTS))


def peft_key(module_path: str, matrix: str) -> str:
    return f"base_model.model.{module_path}.{matrix}.weight"


def lora_config(base_model: str, target_modules: tuple[str, ...], rank: int, alpha: float) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )


def expert_tensors(policy: PersonaFusePolicy) -> ExpertTensors:
    """The stacked expert matrices of every mixture layer (views, no copy)."""
    return {path: (layer.lora_A, layer.lora_B) for path, layer in policy.mixture_layers.items()}


def expert_adapter(policy: PersonaFusePolicy, expert: int) -> LoRAAdapter:
    cfg = policy.config
    tensors: dict[str, Tensor] = {}
    for path, (a, b) in expert_tensors(policy).items():
        tensors[peft_key(path, "lora_A")] = a[expert].detach().cpu()
        tensors[peft_key(path, "lora_B")] = b[expert].detach().cpu()
    return LoRAAdapter(lora_config(cfg.base_model, cfg.target_modules, cfg.rank, cfg.alpha), tensors)


def vllm_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank`` (folded adapters are zero-padded up to it)."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"folded rank {rank} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}; use top_k")


@torch.no_grad()
def fold(
    tensors: ExpertTensors,
    weights: Tensor,
    *,
    scaling: float,
    base_model: str,
    target_modules: tuple[str, ...],
    top_k: int | None = None,
    for_vllm: bool = False,
) -> LoRAAdapter:
    """One LoRA equal to the mixture ``s * sum_e w_e B_e A_e`` for weights (E,).

    With top_k the k largest weights are kept and renormalised to sum to 1 first. Only experts with w_e > 0 enter,
    so the rank is (number active) * r; ``for_vllm`` zero-pads it up to a rank vLLM accepts. The scale s * w_e is
    folded into B and lora_alpha is set to the rank, so PEFT's and vLLM's alpha / r factor is exactly 1.
    """
    if weights.dim() != 1 or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"fold: weights must be a finite, non-negative vector (E,), got {weights}")
    w = top_k_renormalise(weights.double()[None], top_k)[0]
    if top_k is not None:
        w = w / w.sum()  # top_k >= E keeps every weight but still renormalises
    active = (w > 0).nonzero().squeeze(-1)  # (n,) experts that enter the fold
    if active.numel() == 0:
        raise ValueError("fold: every weight is zero; there is no mixture to fold")
    rank = active.numel() * next(iter(tensors.values()))[0].shape[1]  # n * r
    padded = vllm_rank(rank) if for_vllm else rank
    gate = (scaling * w[active])[:, None, None]  # (n, 1, 1) float64: the fold adds no rounding of its own
    out: dict[str, Tensor] = {}
    for path, (a, b) in tensors.items():
        d_out, d_in = b.shape[1], a.shape[2]
        folded_a = a.new_zeros(padded, d_in)  # rows past `rank` stay zero: padding changes nothing
        folded_b = b.new_zeros(d_out, padded)
        folded_a[:rank] = a[active].reshape(rank, d_in)
        folded_b[:, :rank] = (gate * b[active].double()).permute(1, 0, 2).reshape(d_out, rank).to(b.dtype)
        out[peft_key(path, "lora_A")] = folded_a.cpu()
        out[peft_key(path, "lora_B")] = folded_b.cpu()
    return LoRAAdapter(lora_config(base_model, target_modules, padded, float(padded)), out)


def fold_policy(
    policy: PersonaFusePolicy, weights: Tensor, top_k: int | None = None, for_vllm: bool = False
) -> LoRAAdapter:
    """``fold`` for a policy's experts and config."""
    cfg = policy.config
    return fold(
        expert_tensors(policy),
        weights,
        scaling=cfg.scaling,
        base_model=cfg.base_model,
        target_modules=cfg.target_modules,
        top_k=top_k,
        for_vllm=for_vllm,
    )


def save_policy(policy: PersonaFusePolicy, path: Path) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "persona_config.json").write_text(policy.config.model_dump_json(indent=2))
        router_state = {k: v.detach().cpu().contiguous() for k, v in policy.router.state_dict().items()}
        save_file(router_state, str(tmp / "router.safetensors"))
        for e, name in enumerate(policy.experts):
            expert_adapter(policy, e).save(tmp / "experts" / name)


@torch.no_grad()
def load_policy_weights(policy: PersonaFusePolicy, path: Path) -> None:
    """Loads router and experts saved by ``save_policy`` into ``policy``; any mismatch is an error."""
    policy.router.load_state_dict(load_file(str(path / "router.safetensors")), strict=True)
    cfg = policy.config
    for e, name in enumerate(policy.experts):
        folder = path / "experts" / name
        saved = json.loads((folder / "adapter_config.json").read_text())
        if saved.get("r") != cfg.rank or float(saved.get("lora_alpha", -1)) != cfg.alpha:
            raise ValueError(
                f"{folder}/adapter_config.json: r={saved.get('r')}, lora_alpha={saved.get('lora_alpha')} but "
                f"persona_config.json says rank={cfg.rank}, alpha={cfg.alpha}"
            )
        state = load_file(str(folder / ADAPTER_WEIGHTS))
        expected = set()
        for module_path, (a, b) in expert_tensors(policy).items():
            for matrix, target in (("lora_A", a), ("lora_B", b)):
                key = peft_key(module_path, matrix)
                expected.add(key)
                if key not in state:
                    raise ValueError(f"{folder}/{ADAPTER_WEIGHTS}: missing tensor {key}")
                target[e].copy_(state[key])
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise ValueError(f"{folder}/{ADAPTER_WEIGHTS}: tensors {unexpected[:3]} match no mixture layer")
