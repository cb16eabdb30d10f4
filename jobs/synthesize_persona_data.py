"""Stage 1a: a teacher model writes persona replies (reason first, then reply) for every situation and pole.

    python jobs/synthesize_persona_data.py --config configs/persona_data_smollm2_cpu.yaml [a.b=value ...]

Writes output_dir/<expert>.jsonl (situation, reply, reasoning, provenance) and manifest.json (prompts, counts of
every filter reason per expert).
"""

from __future__ import annotations

import json
import sys

from policies.persona_synthesis import SynthesisConfig, write_persona_data
from rlhf.cli import run_config_job


def summary(out) -> dict:
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    return {"kept": {expert: c["kept"] for expert, c in counts.items()}}


def main(argv: list[str] | None = None) -> int:
    return run_config_job(SynthesisConfig, write_persona_data, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
