"""Ray actor around one DeepSpeed Learner rank: each method is a short delegation."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from torch import Tensor

from rlhf.batch import RolloutBatch
from rlhf.build import RoutedPrompts
from rlhf.config import JobConfig
from rlhf.learner import Learner, MinibatchCounts, import_deepspeed, init_distributed
from rlhf.pole_anchor import PersonaData
from rlhf.prompts import PromptRecord
from rlhf.sync import AdapterState
from rlhf.transfer import read_folder, write_folder


class LearnerActor:
    def __init__(self, cfg: JobConfig, rank: int, world_size: int):  # the driver's validated config object
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        torch.set_num_threads(self.cfg.placement.torch_threads or os.cpu_count() or 1)
        import_deepspeed()  # now, not between master_address picking a port and rank 0 binding it in setup
        self.learner: Learner | None = None

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the process group."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        init_distributed(self.rank, self.world_size, master_addr, master_port)
        self.learner = Learner(self.cfg, self.world_size)

    def set_pole_anchor(self, data: PersonaData) -> int:
        return self.learner.set_pole_anchor(data)

    def route(self, records: list[PromptRecord]) -> RoutedPrompts:
        return self.learner.route(records)

    def score(self, shard: RolloutBatch) -> dict[str, Tensor]:
        return self.learner.score(shard)

    def update(
        self, shard: RolloutBatch, counts: list[MinibatchCounts], kl_coef: float | None = None
    ) -> dict[str, float]:
        return self.learner.update(shard, counts, kl_coef)

    def adapter_state(self) -> AdapterState:
        return self.learner.adapter_state()

    @ray.method(num_returns=2)
    def publish_adapters(self) -> tuple[AdapterState, tuple[int, int]]:
        """(snapshot, (version, bytes)) as two objects: rollouts fetch the first straight from this actor's node;
        the driver only reads the small second one."""
        state = self.learner.publish()
        return state, (state.version, state.nbytes)

    def training_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return self.learner.training_state()

    def load_training_state(
        self, policy_files: dict[str, bytes], tensors: dict[str, Tensor], document: dict[str, Any]
    ) -> None:
        """``policy_files``: the checkpoint's policy folder as bytes (read by the driver, on any node)."""
        with tempfile.TemporaryDirectory() as tmp:
            write_folder(Path(tmp), policy_files)
            self.learner.load_training_state(tmp, tensors, document)

    def policy_files(self) -> dict[str, bytes]:
        """The policy folder as bytes, for the driver to write wherever the run folder is."""
        with tempfile.TemporaryDirectory() as tmp:
            self.learner.policy.save_pretrained(Path(tmp) / "policy")
            return read_folder(Path(tmp) / "policy")
