"""A learner rank's training state for exact resume, as safetensors (tensors) + JSON (everything else).

DeepSpeed's own checkpoints are pickles; we load only safetensors, so this module writes the pieces that matter:

* the base torch optimizer's state (AdamW moments and step counts) and its param groups;
* the fp32 master partitions of ZeRO-1/2 and of DeepSpeed's bf16 optimizer (so bf16 runs resume without rounding);
* the LR scheduler, the value head (PPO), the learner's weight version and its torch RNG state.

Each rank writes ``rank_<r>.safetensors`` + ``rank_<r>.json`` for its own ZeRO partition, so a resume needs the
same number of learners (checked, with a clear error). Adapters are restored from the checkpoint's policy folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

FP32_PARTITION_ATTRS = ("single_partition_of_fp32_groups", "fp32_groups_flat_partition")  # ZeRO-1/2, bf16 optimizer


def base_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrapper (or the optimizer itself at ZeRO-0, fp32)."""
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer


def fp32_partitions(optimizer: Any) -> list[Tensor]:
    """This rank's fp32 master partitions, or [] when the model parameters are the master weights."""
    for attr in FP32_PARTITION_ATTRS:
        if hasattr(optimizer, attr):
            return list(getattr(optimizer, attr))
    return []


def capture(
    optimizer: Any, scheduler: Any, critic: nn.Module | None, meta: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors for safetensors, JSON-able dict) describing this rank's training state."""
    opt_state = base_optimizer(optimizer).state_dict()
    tensors: dict[str, Tensor] = {"rng/torch": torch.get_rng_state()}
    for index, slots in opt_state["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer/{index}/{name}"] = torch.as_tensor(value)
    for i, partition in enumerate(fp32_partitions(optimizer)):
        tensors[f"fp32_partition/{i}"] = partition.detach()
    if critic is not None:
        tensors.update({f"critic/{k}": v for k, v in critic.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    document = {
        **meta,
        "param_groups": opt_state["param_groups"],
        "scheduler": scheduler.state_dict(),
        "fp32_partitions": len(fp32_partitions(optimizer)),
    }
    return tensors, document


def save(path: Path, rank: int, tensors: dict[str, Tensor], document: dict[str, Any]) -> None:
    """Writes rank_<rank>.safetensors and rank_<rank>.json into ``path`` (inside the caller's atomic folder)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / f"rank_{rank}.safetensors"))
    (path / f"rank_{rank}.json").write_text(json.dumps(document, indent=1))


def load(path: Path, rank: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensor_file, json_file = path / f"rank_{rank}.safetensors", path / f"rank_{rank}.json"
    if not tensor_file.is_file() or not json_file.is_file():
        raise FileNotFoundError(f"{path}: no learner state for rank {rank} (saved with fewer learners?)")
    return load_file(str(tensor_file)), json.loads(json_file.read_text())


@torch.no_grad()
def restore(
    optimizer: Any, scheduler: Any, critic: nn.Module | None, tensors: dict[str, Tensor], document: dict[str, Any]
) -> None:
    """Puts a captured state back; any structural mismatch is an error, never a partial load."""
    partitions = fp32_partitions(optimizer)
    if document["fp32_partitions"] != len(partitions):
        raise ValueError(
            f"learner state has {document['fp32_partitions']} fp32 partitions, this optimizer "
            f"{len(partitions)}: resume with the same learner.zero_stage and learner.dtype"
        )
    for i, partition in enumerate(partitions):
        saved = tensors[f"fp32_partition/{i}"]
        if saved.shape != partition.shape:
            raise ValueError(f"fp32 partition {i}: saved {tuple(saved.shape)}, now {tuple(partition.shape)}")
        partition.copy_(saved)
    if partitions:
        optimizer.update_lp_params()  # master partitions -> the model's (bf16/fp32) parameters on every rank
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    base_optimizer(optimizer).load_state_dict({"state": state, "param_groups": document["param_groups"]})
    scheduler.load_state_dict(document["scheduler"])
    if critic is not None:
        critic.load_state_dict({k.removeprefix("critic/"): v for k, v in tensors.items() if k.startswith("critic/")})
    torch.set_rng_state(tensors["rng/torch"])
