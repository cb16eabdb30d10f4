"""Stage 1b: SFT of each persona expert on its own replies (one-hot routing per row), optional specialisation.

    python jobs/train_adapters.py --config configs/adapters_smollm2_cpu.yaml [a.b=value ...]

Writes output_dir/policy (loads with PersonaFusePolicy.from_pretrained) and sft_report.json (held-out reply NLL
per expert, alone vs the base).
"""

from __future__ import annotations

import argparse
import json
import sys

from policies.adapter_sft import AdapterSFTConfig, train_adapters
from rlhf.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. epochs=1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=AdapterSFTConfig)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = train_adapters(cfg)
    report = json.loads((out / "sft_report.json").read_text())
    print(json.dumps({"output_dir": str(out), "heldout_after": report["heldout_after"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
