"""PPO post-training of the PersonaFuse policy: a value head on the policy's hidden states, GAE over KL-shaped
per-token rewards, clipped policy and value losses; same Ray / vLLM / DeepSpeed layout as jobs/grpo.py.

    python jobs/ppo.py --config configs/smollm2_cpu_ppo.yaml [a.b=value ...] [--resume [CHECKPOINT]]
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/ppo.py --config configs/smollm2_cpu_ppo.yaml

The whole config is validated before Ray starts. Without a running cluster a local Ray is started.
"""

from __future__ import annotations

import sys

from rlhf.cli import run_rl_job


def main(argv: list[str] | None = None) -> int:
    return run_rl_job("ppo", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
