"""HF rollout engine: shapes, EOS masking, logprobs consistent with the learner's, stale weights refused."""

from __future__ import annotations

import pytest
import torch

from rlhf.build import route_records
from rlhf.config import load_config
from rlhf.prompts import load_prompts
from rlhf.rollout import RolloutWorker, decode_responses, prompt_seeds, response_mask_until_eos
from rlhf.sync import StaleWeightsError, load_snapshot, snapshot
from tests.conftest import randomize_experts


def test_response_mask_until_eos() -> None:
    ids = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 9, 2, 9]])
    assert response_mask_until_eos(ids, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert response_mask_until_eos(ids, [9, 7]).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]


def test_prompt_seeds_never_repeat_across_prompts_actors_and_steps() -> None:
    """Actor 1 of a step (groups 2-3) and the next step's actor 0 used to share seeds; vLLM adds k for sample k."""
    g = 4
    drawn = [s + k for step in (7, 8) for first in (0, 2) for s in prompt_seeds(step, first, 2, g) for k in range(g)]
    assert len(set(drawn)) == len(drawn) == 2 * 2 * 2 * g
    assert max(prompt_seeds((2**31 - 1) * 100_003 + 5, 40, 8, 8)) < 2**62  # torch seeds must stay below 2**64


def test_decode_responses_leaves_padding_out() -> None:
    """Id 0 is a real token here, as "!" is in Qwen2.5 and Llama 3: padding must not turn into it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"!": 0, "Hello": 1, "there": 2, "</s>": 3}, unk_token="!"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    ids = torch.tensor([[1, 2, 3, 3], [1, 0, 2, 2]])  # the 3 after EOS and the trailing 2s are padding
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert decode_responses(tok, ids, mask) == ["Hello there", "Hello !"]


def make_worker(model_dir, dtype: str = "fp32") -> RolloutWorker:
    overrides = [f"policy.base_model={model_dir}", "rollout.engine=hf", "rollout.max_new_tokens=6"]
    return RolloutWorker(load_config(None, [*overrides, f"rollout.dtype={dtype}"]))


def routed(worker: RolloutWorker, records) -> torch.Tensor:
    """The weights a learner with the same adapters would send."""
    return route_records(worker.policy, records, worker.cfg.data.max_prompt_tokens).weights


@pytest.fixture()
def worker(tiny_model_dir) -> RolloutWorker:
    return make_worker(tiny_model_dir)


@pytest.mark.parametrize(("dtype", "tol"), [("fp32", 1e-4), ("bf16", 0.1)])
def test_generate_and_logprobs_match_the_policy(tiny_model_dir, dtype: str, tol: float) -> None:
    """fp32 sampling log-probs equal the learner's; bf16 (autocast) ones differ only by rounding."""
    worker = make_worker(tiny_model_dir, dtype)
    randomize_experts(worker.policy, std=0.2)
    worker.set_weights(snapshot(worker.policy, version=0))
    records = load_prompts("builtin")[:2]
    batch = worker.generate(records, routed(worker, records), group_offset=10, version=0, seed=1)
    assert batch.response_ids.shape == (8, 6) and batch.group_ids.tolist() == [10] * 4 + [11] * 4
    assert len(batch.completions) == 8 and batch.categories[0] == records[0].category
    assert ((batch.routing_weights > 0).sum(-1) == 2).all()  # top-2 routing
    eos = worker.policy.tokenizer.eos_token_id
    lengths = batch.response_mask.sum(-1)
    cut_off = [n == 6 and eos not in row.tolist() for row, n in zip(batch.response_ids, lengths, strict=True)]
    assert batch.truncated.tolist() == cut_off
    relogged = worker.policy.logprobs(batch.input_ids, batch.attention_mask, 6, batch.routing_weights)
    torch.testing.assert_close(relogged * batch.response_mask, batch.rollout_logprobs, atol=tol, rtol=0)
    assert (dtype == "fp32") == torch.allclose(relogged * batch.response_mask, batch.rollout_logprobs, atol=1e-4)


def sample_favouring(worker: RolloutWorker, token: int):
    """Samples 2 prompts x 4 replies with an output bias of 10 on ``token`` (p ~ 0.3 a step): (batch, reply lengths,
    which replies end on ``token``)."""
    model = worker.policy.model
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[token] = 10.0
    model.lm_head = head
    worker.set_weights(snapshot(worker.policy, version=0))
    records = load_prompts("builtin")[:2]
    batch = worker.generate(records, routed(worker, records), group_offset=0, version=0, seed=1)
    lengths = batch.response_mask.sum(-1)
    ended = torch.stack([row[n - 1] == token for row, n in zip(batch.response_ids, lengths, strict=True)])
    return batch, lengths, ended


def test_truncated_marks_the_replies_cut_off_at_the_limit(worker) -> None:
    """An output bias makes EOS likely (p ~ 0.3 a token), so some of the 8 replies end within the 6 tokens and some
    are cut off; ``truncated`` is set exactly on the cut-off ones."""
    batch, lengths, ended = sample_favouring(worker, worker.policy.tokenizer.eos_token_id)
    assert ended.any() and not ended.all()
    assert torch.equal(batch.truncated, ~ended) and (lengths[batch.truncated] == 6).all()


def test_the_models_generation_defaults_do_not_change_sampling_but_its_eos_ids_end_replies(
    tiny_model_dir, tmp_path
) -> None:
    """A model folder's generation_config.json may list a second EOS id (Qwen2.5-Instruct: <|im_end|> and
    <|endoftext|>) and set sampling defaults (Qwen's repetition_penalty 1.05). vLLM stops on every EOS id and
    ignores the defaults under explicit SamplingParams; the HF engine must do the same, or it samples from another
    distribution than the log-probs it records. Here min_new_tokens=6 in the folder would forbid any EOS within the
    6 tokens: replies must still end at the folder's second EOS id, which the head favours."""
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    worker_eos = 300
    config = json.loads((model_dir / "generation_config.json").read_text())
    config.update(eos_token_id=[config["eos_token_id"], worker_eos], min_new_tokens=6, repetition_penalty=1.5)
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    worker = make_worker(model_dir)
    batch, lengths, ended = sample_favouring(worker, worker_eos)
    assert ended.any() and (lengths[ended] < 6).any() and torch.equal(batch.truncated, ~ended)
    relogged = worker.policy.logprobs(batch.input_ids, batch.attention_mask, 6, batch.routing_weights)
    torch.testing.assert_close(relogged * batch.response_mask, batch.rollout_logprobs, atol=1e-4, rtol=0)


def test_samples_with_the_weights_it_is_given(worker) -> None:
    """The rollout samples with the learners' routing, not its own: one-hot rows come back as they went in."""
    randomize_experts(worker.policy, std=0.2)
    worker.set_weights(snapshot(worker.policy, version=0))
    records = load_prompts("builtin")[:2]
    weights = torch.zeros(2, len(worker.policy.experts))
    weights[0, 3] = weights[1, 7] = 1.0
    batch = worker.generate(records, weights, group_offset=0, version=0, seed=1)
    assert torch.equal(batch.routing_weights, weights.repeat_interleave(4, 0))
    relogged = worker.policy.logprobs(batch.input_ids, batch.attention_mask, 6, batch.routing_weights)
    torch.testing.assert_close(relogged * batch.response_mask, batch.rollout_logprobs, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="one row per prompt"):
        worker.generate(records, weights[:1], group_offset=0, version=0, seed=1)


def test_no_sampling_before_a_complete_snapshot(worker) -> None:
    records = load_prompts("builtin")[:1]
    with pytest.raises(RuntimeError, match="no adapter weights yet"):
        worker.generate(records, routed(worker, records), 0, version=0, seed=0)


def test_stale_weights_are_refused(worker) -> None:
    state = snapshot(worker.policy, version=2)
    worker.set_weights(state)
    with pytest.raises(StaleWeightsError, match="v1"):
        worker.set_weights(snapshot(worker.policy, version=1))
    records = load_prompts("builtin")[:1]
    with pytest.raises(StaleWeightsError, match="holds v2"):
        worker.generate(records, routed(worker, records), 0, version=1, seed=0)


def test_a_partial_snapshot_needs_a_complete_one_first(tiny_model_dir) -> None:
    worker = make_worker(tiny_model_dir)
    with pytest.raises(ValueError, match="first"):
        worker.set_weights(snapshot(worker.policy, version=1, trained_only=True))
    worker.set_weights(snapshot(worker.policy, version=1))
    worker.set_weights(snapshot(worker.policy, version=2, trained_only=True))
    assert worker.version == 2


def test_adapters_only_policy_folds_like_the_full_one(tiny_model_dir, tiny_policy) -> None:
    """``without_base`` keeps no base weights, loads a snapshot, folds the same LoRA, and refuses to run the base."""
    from policies.export import expert_tensors, fold
    from policies.policy import PersonaFusePolicy

    randomize_experts(tiny_policy, std=0.2)
    bare = PersonaFusePolicy.without_base(tiny_policy.config)
    assert not bare.has_base_weights
    load_snapshot(bare, snapshot(tiny_policy, version=0))
    weights = torch.zeros(len(tiny_policy.experts))
    weights[1], weights[4] = 0.6, 0.4
    cfg = tiny_policy.config
    folded = [
        fold(expert_tensors(p), weights, scaling=cfg.scaling, base_model=cfg.base_model,
             target_modules=cfg.target_modules, top_k=cfg.router.top_k).tensors
        for p in (tiny_policy, bare)
    ]  # fmt: skip
    assert folded[0].keys() == folded[1].keys()
    assert all(torch.equal(folded[0][k], folded[1][k]) for k in folded[0])
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="adapters only"):
        bare.route(ids, ids)
