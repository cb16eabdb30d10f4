"""Rollout worker: samples G replies per prompt with the persona mixture the learners routed, returns a RolloutBatch.

The learners route (they hold the base on their devices), so the worker only samples. Two engines: ``hf``
(transformers generate through the fused mixture; the worker holds an HF copy of the base) and ``vllm`` (each
prompt's mixture folded into one LoRA, served by vLLM's LoRARequest; see rollout_vllm.py). vLLM holds the base
itself, so a vLLM worker's policy is the experts and router alone (``PersonaFusePolicy.without_base``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import GenerationConfig

from policies.policy import PersonaFusePolicy, bf16_autocast, eos_token_ids, token_logprobs
from rlhf.batch import RolloutBatch
from rlhf.build import build_policy, persona_config, tokenize_prompts
from rlhf.config import JobConfig
from rlhf.prompts import PromptRecord
from rlhf.sync import AdapterState, StaleWeightsError, SyncedAdapters, load_snapshot


def response_mask_until_eos(response_ids: Tensor, eos_token_ids: int | list[int]) -> Tensor:
    """1 up to and including the first EOS (any of ``eos_token_ids``) of each row, 0 after it. (B, T) -> (B, T)."""
    is_eos = torch.isin(response_ids, torch.as_tensor(eos_token_ids, device=response_ids.device))
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long()


def prompt_seeds(step_seed: int, first_group: int, count: int, samples: int) -> list[int]:
    """One sampling seed per prompt, from the step's seed and the prompt's global group index. vLLM draws sample k
    of a prompt with seed + k, so seeds sit ``samples`` apart: no two replies of a step share a random stream, not
    even those of a prompt that appears twice, and another actor or step never reuses them."""
    return [((step_seed * 1_000_003 + first_group + j) * samples) % 2**62 for j in range(count)]  # torch: < 2**64


def decode_responses(tokenizer, response_ids: Tensor, response_mask: Tensor) -> list[str]:
    """Each reply's sampled tokens as text: padding never reaches the rewards (id 0 is "!" in Qwen2.5 and
    Llama 3), special tokens such as EOS are dropped."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(response_ids, response_mask, strict=True)]
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]


class HFEngine:
    """Samples with transformers' generate through the fused mixture (per-sequence routing weights)."""

    def __init__(self, policy: PersonaFusePolicy, cfg: JobConfig):
        self.policy = policy
        self.cfg = cfg.rollout
        self.eos = eos_token_ids(policy.model, policy.tokenizer)
        # generate fills what a call leaves unset from the model's generation_config.json (Qwen2.5-Instruct's sets
        # repetition_penalty 1.05), which would sample from another distribution than the log-probs recorded
        # below; vLLM ignores those defaults under explicit SamplingParams. This engine's own copy gets a neutral one.
        policy.model.generation_config = GenerationConfig(
            eos_token_id=self.eos,
            pad_token_id=policy.tokenizer.pad_token_id,
            bos_token_id=policy.tokenizer.bos_token_id,
        )

    @torch.no_grad()
    def sample(
        self, prompt_ids: Tensor, prompt_mask: Tensor, weights: Tensor, seeds: list[int], version: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(N, P) prompts and (N, E) weights -> response_ids, response_mask, rollout_logprobs, each (N*G, T), and
        truncated (N*G,): no EOS within max_new_tokens. One random stream for the batch, seeded by the first
        prompt's seed (``prompt_seeds``)."""
        g = self.cfg.samples_per_prompt
        device = self.policy.device
        ids, mask, w = (t.to(device).repeat_interleave(g, dim=0) for t in (prompt_ids, prompt_mask, weights))
        tok = self.policy.tokenizer
        torch.manual_seed(seeds[0])
        with self.policy.mixture(w), bf16_autocast(self.cfg.dtype == "bf16"):
            out = self.policy.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                top_k=0,
                max_new_tokens=self.cfg.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=self.eos,
                output_logits=True,
                return_dict_in_generate=True,
            )
        response_ids = out.sequences[:, ids.shape[1] :]  # (N*G, T)
        # One step at a time: stacking the (N*G, V) logits of every step in fp32 would hold a second, larger copy of
        # what generate already keeps (tens of GB for a 7B vocabulary at the GPU presets' batch).
        logprobs = torch.stack(
            [
                token_logprobs(step[:, None].float() / self.cfg.temperature, response_ids[:, t, None])[:, 0]
                for t, step in enumerate(out.logits)
            ],
            dim=1,
        )  # (N*G, T)
        response_mask = response_mask_until_eos(response_ids, self.eos)
        truncated = ~torch.isin(response_ids, torch.tensor(self.eos, device=device)).any(-1)  # EOS or the limit
        return response_ids.cpu(), response_mask.cpu(), (logprobs * response_mask).cpu(), truncated.cpu()

    def close(self) -> None:
        """Nothing to free: this engine writes no files."""


class RolloutWorker:
    """Plain class (the Ray actor in rollout_actor.py only delegates to it). It holds no weights until the first
    complete snapshot arrives (the driver syncs before the first step)."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.version = 0
        self.complete = False  # has loaded a complete snapshot (after it, partial ones suffice)
        self.synced = SyncedAdapters() if cfg.rollout.sync_delta != "none" else None  # decodes delta syncs
        if cfg.rollout.engine == "hf":
            device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray shows the actor only its own GPUs
            self.policy = build_policy(cfg).eval().to(device)
            self.engine = HFEngine(self.policy, cfg)
        else:
            from rlhf.rollout_vllm import VLLMEngine  # vLLM is imported only where it is used

            self.policy = PersonaFusePolicy.without_base(persona_config(cfg)).eval()
            self.engine = VLLMEngine(self.policy, cfg)

    def set_weights(self, state: AdapterState) -> None:
        if state.version < self.version:
            raise StaleWeightsError(f"rollout has weights v{self.version}; refusing older v{state.version}")
        if not (state.complete or self.complete):
            raise ValueError("a partial adapter snapshot (trained tensors only) cannot be this rollout's first")
        resolved = state if self.synced is None else self.synced.resolve(state)
        load_snapshot(self.policy, resolved)  # checks names and shapes; a failed load leaves the copy as it was
        if self.synced is not None:
            self.synced.commit(resolved)
        self.version = state.version
        self.complete = self.complete or state.complete

    def close(self) -> None:
        self.engine.close()

    def generate(
        self, records: list[PromptRecord], weights: Tensor, group_offset: int, version: int, seed: int
    ) -> RolloutBatch:
        """G samples for each prompt record under its routing ``weights`` (N, E) (the learners' router);
        ``version`` must be the weights this worker holds; ``seed`` is the step's (every actor gets the same one;
        ``prompt_seeds`` spreads it over the prompts)."""
        if not self.complete:
            raise RuntimeError("rollout holds no adapter weights yet: load a complete snapshot (set_weights) first")
        if version != self.version:
            raise StaleWeightsError(f"asked to sample with weights v{version}, rollout holds v{self.version}")
        if weights.shape != (len(records), len(self.policy.experts)):
            raise ValueError(
                f"routing weights have shape {tuple(weights.shape)}; expected ({len(records)}, "
                f"{len(self.policy.experts)}): one row per prompt, one column per expert"
            )
        _, prompt_ids, prompt_mask = tokenize_prompts(self.policy, records, self.cfg.data.max_prompt_tokens)
        g = self.cfg.rollout.samples_per_prompt
        seeds = prompt_seeds(seed, group_offset, len(records), g)
        response_ids, response_mask, logprobs, truncated = self.engine.sample(
            prompt_ids, prompt_mask, weights, seeds, version
        )
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(g, 0),
            prompt_mask=prompt_mask.repeat_interleave(g, 0),
            response_ids=response_ids,
            response_mask=response_mask,
            group_ids=torch.arange(len(records)).repeat_interleave(g) + group_offset,
            routing_weights=weights.repeat_interleave(g, 0),
            rollout_logprobs=logprobs,
            truncated=truncated,
            prompts=[r.messages[-1]["content"] for r in records for _ in range(g)],  # the situation, for rewards
            completions=decode_responses(self.policy.tokenizer, response_ids, response_mask),
            categories=[r.category for r in records for _ in range(g)],
        )
