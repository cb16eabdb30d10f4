"""Ray actor around the RewardComposer: the reward models load and score here, on the CPUs and GPUs Ray reserves
for it (``placement.reward_cpus`` / ``reward_gpus``), not in the driver. A driver on a GPU node would otherwise put
a judge or reward model on cuda:0 beside the learners and rollouts, outside Ray's accounting."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import torch

from rewards.base import RewardFactory
from rewards.compose import ComposedRewards, RewardComposer
from rlhf.config import JobConfig


class RewardActor:
    def __init__(self, cfg: JobConfig, factories: Mapping[str, RewardFactory]):  # the driver's validated config
        pc = cfg.placement  # threads: the configured count, else the CPUs reserved for it, else the node's cores
        torch.set_num_threads(pc.torch_threads or int(pc.reward_cpus) or os.cpu_count() or 1)
        self.composer = RewardComposer(cfg.rewards, factories=factories)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], training: bool = True, **metadata: Any
    ) -> ComposedRewards:
        return self.composer(prompts, completions, training=training, **metadata)

    def state_dict(self) -> dict[str, dict[str, float | int]]:
        return self.composer.state_dict()

    def load_state_dict(self, state: dict[str, dict[str, float | int]]) -> None:
        self.composer.load_state_dict(state)
