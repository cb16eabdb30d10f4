from __future__ import annotations

from types import SimpleNamespace

import torch

from policies.attention import FP32_ATTENTION
from rlhf.batch import RolloutBatch
from rlhf.config import load_config
from rlhf.learner import Learner, attention_implementation, deepspeed_config


def test_deepspeed_config_follows_the_learner_config() -> None:
    cfg = load_config(None, ["learner.zero_stage=1", "learner.dtype=bf16", "learner.offload_optimizer=true"])
    ds = deepspeed_config(cfg, grad_accum=3)
    assert ds["zero_optimization"] == {"stage": 1, "offload_optimizer": {"device": "cpu"}}
    assert ds["bf16"] == {"enabled": True} and ds["gradient_accumulation_steps"] == 3
    assert ds["communication_data_type"] == "fp32"  # bf16 weights, gradients still averaged in fp32
    assert deepspeed_config(load_config(None, ["learner.zero_stage=0"]), 1)["zero_optimization"] == {"stage": 0}
    assert ds["zero_force_ds_cpu_optimizer"] is False  # offload runs our torch AdamW


def test_score_splits_a_shard_as_the_update_splits_its_minibatches() -> None:
    """8 rows, 2 minibatches, micro-batch 3: the score pass takes rows 0-2, 3, 4-6, 7 (the update's micro-batches),
    not 0-2, 3-5, 6-7, so the first optimizer step recomputes pi_old on the very same micro-batches; each comes
    trimmed to its own longest response."""
    cfg = load_config(None, ["algorithm.minibatches=2", "learner.micro_batch_size=3"])
    lengths = torch.tensor([2, 5, 3, 1, 4, 4, 2, 6])
    rows = torch.arange(8)
    batch = RolloutBatch(
        prompt_ids=torch.ones(8, 4, dtype=torch.long), prompt_mask=torch.ones(8, 4, dtype=torch.long),
        response_ids=torch.ones(8, 6, dtype=torch.long),
        response_mask=(torch.arange(6)[None, :] < lengths[:, None]).long(),
        group_ids=rows // 2, routing_weights=torch.full((8, 10), 0.1), rollout_logprobs=torch.zeros(8, 6),
        truncated=lengths == 6,
    )  # fmt: skip
    learner = SimpleNamespace(cfg=cfg)
    split = Learner.micro_batches(learner, batch, cfg.algorithm.minibatches)
    assert [mb.group_ids.tolist() for mb in split] == [[0, 0, 1], [1], [2, 2, 3], [3]]
    assert [mb.response_ids.shape[1] for mb in split] == [5, 1, 4, 6]
    update_split = [mb for part in batch.shards(2) for mb in Learner.micro_batches(learner, part)]
    assert [mb.group_ids.tolist() for mb in update_split] == [mb.group_ids.tolist() for mb in split]


def test_attention_follows_the_config_and_the_host(monkeypatch) -> None:
    assert attention_implementation(load_config(None, ["learner.attention=fp32"])) == FP32_ATTENTION
    assert attention_implementation(load_config(None, ["learner.attention=sdpa"])) is None
    auto = load_config(None, [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_implementation(auto) == FP32_ATTENTION  # a CPU host
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attention_implementation(auto) is None  # a GPU host keeps sdpa (long replies: O(T * S) memory per head)
