"""Stage 1a: a teacher model writes persona replies (reason first, then reply) for every situation and pole.

    python jobs/synthesize_persona_data.py --config configs/persona_data_smollm2_cpu.yaml [a.b=value ...]

Writes output_dir/<expert>.jsonl (situation, reply, reasoning, provenance) and manifest.json (prompts, counts of
every filter reason per expert).
"""

from __future__ import annotations

import argparse
import json
import sys

from policies.persona_synthesis import SynthesisConfig, write_persona_data
from rlhf.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. max_situations=20")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=SynthesisConfig)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = write_persona_data(cfg)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    print(json.dumps({"output_dir": str(out), "kept": {e: c["kept"] for e, c in counts.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
