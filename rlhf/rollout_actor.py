"""Ray actor around RolloutWorker: each method delegates (generate also times itself)."""

from __future__ import annotations

import os
import time

import ray
import torch
from torch import Tensor

from rlhf.batch import RolloutBatch
from rlhf.config import JobConfig
from rlhf.prompts import PromptRecord
from rlhf.rollout import RolloutWorker
from rlhf.sync import AdapterState


class RolloutActor:
    def __init__(self, cfg: JobConfig):  # the driver's validated config object, not re-validated here
        torch.set_num_threads(cfg.placement.torch_threads or os.cpu_count() or 1)
        self.worker = RolloutWorker(cfg)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def set_weights(self, state: AdapterState) -> int:
        self.worker.set_weights(state)
        return state.version

    def close(self) -> None:
        self.worker.close()

    def generate(
        self, records: list[PromptRecord], weights: Tensor, group_offset: int, version: int, seed: int
    ) -> tuple[RolloutBatch, float]:
        """The worker's batch and how long it took here (the driver may be busy elsewhere while it samples)."""
        start = time.perf_counter()
        return self.worker.generate(records, weights, group_offset, version, seed), time.perf_counter() - start
