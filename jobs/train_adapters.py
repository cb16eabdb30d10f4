"""Stage 1b: SFT of each persona expert on its own replies (one-hot routing per row), optional specialisation.

    python jobs/train_adapters.py --config configs/adapters_smollm2_cpu.yaml [a.b=value ...]

Writes output_dir/policy (loads with PersonaFusePolicy.from_pretrained) and sft_report.json (held-out reply NLL
per expert, alone vs the base).
"""

from __future__ import annotations

import json
import sys

from policies.adapter_sft import AdapterSFTConfig, train_adapters
from rlhf.cli import run_config_job


def summary(out) -> dict:
    return {"heldout_after": json.loads((out / "sft_report.json").read_text())["heldout_after"]}


def main(argv: list[str] | None = None) -> int:
    return run_config_job(AdapterSFTConfig, train_adapters, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
