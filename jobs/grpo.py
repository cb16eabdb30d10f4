"""GRPO post-training of the PersonaFuse policy (router + persona experts) on Ray: vLLM rollouts, DeepSpeed learners.

    python jobs/grpo.py --config configs/smollm2_cpu_grpo.yaml [a.b=value ...] [--resume [CHECKPOINT]]
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/grpo.py --config configs/smollm2_cpu_grpo.yaml

The whole config is validated before Ray starts. Without a running cluster a local Ray is started.
"""

from __future__ import annotations

import sys

from rlhf.cli import run_rl_job


def main(argv: list[str] | None = None) -> int:
    return run_rl_job("grpo", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
