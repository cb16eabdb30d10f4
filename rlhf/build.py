"""Builds the persona policy and tokenised prompts from a JobConfig (shared by rollout workers and learners)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policies.config import PersonaConfig
from policies.embedded import resolve_model_dir
from policies.policy import PersonaFusePolicy
from rlhf.config import JobConfig
from rlhf.prompts import PromptRecord


def base_model_dir(cfg: JobConfig) -> str:
    return resolve_model_dir(cfg.policy.base_model)


def persona_config(cfg: JobConfig) -> PersonaConfig:
    """The policy's architecture: the one saved at policy.init_from, or the config's policy section."""
    if cfg.policy.init_from:
        return PersonaFusePolicy.saved_config(cfg.policy.init_from, base_model=base_model_dir(cfg))
    p = cfg.policy
    return PersonaConfig(
        base_model=base_model_dir(cfg),
        experts=p.experts,
        rank=p.rank,
        alpha=p.alpha,
        target_modules=p.target_modules,
        router=p.router,
    )


def build_policy(cfg: JobConfig, dtype: torch.dtype = torch.float32) -> PersonaFusePolicy:
    """A fresh policy (seeded) or the one saved at policy.init_from, on the configured base, loaded in ``dtype``
    (bf16 for a bf16 learner: DeepSpeed would cast it anyway, and a 7B model's fp32 copy per rank is 30 GB of host
    memory)."""
    if cfg.policy.init_from:
        return PersonaFusePolicy.from_pretrained(cfg.policy.init_from, base_model=base_model_dir(cfg), dtype=dtype)
    torch.manual_seed(cfg.run.seed)  # every rank builds the same initial router and experts
    return PersonaFusePolicy.from_base(persona_config(cfg), dtype)


@dataclass(frozen=True)
class RoutedPrompts:
    """The router's decision for a list of prompts, on the CPU."""

    weights: Tensor  # (N, E) mixture weights the rollouts sample with
    features: Tensor  # (N, d) what the router read (the frozen base, adapters off): the update re-routes from it

    @staticmethod
    def cat(parts: list[RoutedPrompts]) -> RoutedPrompts:
        return RoutedPrompts(torch.cat([p.weights for p in parts]), torch.cat([p.features for p in parts]))


@torch.no_grad()
def route_records(policy: PersonaFusePolicy, records: list[PromptRecord], max_tokens: int) -> RoutedPrompts:
    """The router's weights (N, E) for prompt records and the features it read, on the CPU (where the rollouts
    take them)."""
    _, ids, mask = tokenize_prompts(policy, records, max_tokens)
    features = policy.situation_features(ids.to(policy.device), mask.to(policy.device))
    weights = policy.router(features).weights
    return RoutedPrompts(weights.float().cpu(), features.cpu())  # features in the policy's dtype, for its router


def check_prompts_fit(cfg: JobConfig, records: list[PromptRecord]) -> None:
    """Before Ray starts: every prompt, chat-templated by the base model's tokenizer, fits data.max_prompt_tokens,
    and a prompt plus rollout.max_new_tokens fits the model's context. Found at sampling time instead, an over-long
    row would stop the run at whichever step first draws it, and a resume would draw it again. One error lists
    every offending record."""
    from transformers import AutoConfig, AutoTokenizer

    folder = base_model_dir(cfg)
    limit, reply = cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    context = getattr(AutoConfig.from_pretrained(folder, trust_remote_code=False), "max_position_embeddings", None)
    if context is not None and limit + reply > context:
        raise ValueError(
            f"data.max_prompt_tokens ({limit}) + rollout.max_new_tokens ({reply}) = {limit + reply} tokens is more "
            f"than the base model's context ({context} positions, {folder}); lower one of them"
        )
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    texts = [tok.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False) for r in records]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False).input_ids]
    over = [f"{r.source} ({n} tokens)" for r, n in zip(records, lengths, strict=True) if n > limit]
    if over:
        shown = "; ".join(over[:10]) + (f"; and {len(over) - 10} more" if len(over) > 10 else "")
        raise ValueError(
            f"{len(over)} prompt(s) longer than data.max_prompt_tokens={limit}: {shown}; shorten them or raise the "
            "limit"
        )


def tokenize_prompts(policy: PersonaFusePolicy, records: list[PromptRecord], max_tokens: int) -> tuple[
    list[str], Tensor, Tensor
]:  # fmt: skip
    """Chat-templated prompt texts and their left-padded ids/mask (N, P); an over-long prompt is an error."""
    tok = policy.tokenizer
    texts = [tok.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False) for r in records]
    encoded = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    lengths = encoded.attention_mask.sum(-1)
    for record, length in zip(records, lengths.tolist(), strict=True):
        if length > max_tokens:
            raise ValueError(
                f"{record.source}: prompt has {length} tokens, more than data.max_prompt_tokens={max_tokens}; "
                "shorten it or raise the limit"
            )
    return texts, encoded.input_ids, encoded.attention_mask
