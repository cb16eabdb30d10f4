from __future__ import annotations

import torch

from rlhf.config import load_config
from rlhf.stages import compute_advantages, minibatch_counts, rollout_metrics
from tests.rlhf.test_batch import make_batch


def test_kl_in_reward_lowers_the_advantage_of_the_drifting_sample() -> None:
    batch = make_batch(2, 2, 3)
    batch.group_ids = torch.tensor([0, 0])
    batch.rewards = torch.tensor([1.0, 1.0])
    batch.old_logprobs = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    batch.ref_logprobs = torch.full((2, 3), -1.0)
    cfg = load_config(None, ["algorithm.kl.placement=reward", "algorithm.kl.coef=0.5", "algorithm.kl.estimator=k1"])
    compute_advantages(batch, cfg.algorithm)
    # sample 0: k1 = 1 per token, 3 tokens -> reward 1 - 0.5*3 = -0.5; sample 1: reward 1 -> A0 < 0 < A1
    assert batch.advantages[0, 0] < 0 < batch.advantages[1, 0]
    cfg = load_config(None, ["algorithm.kl.placement=loss"])
    compute_advantages(batch, cfg.algorithm)
    assert torch.equal(batch.advantages, torch.zeros(2, 3))  # equal rewards, no KL in the reward


def test_minibatch_counts_are_global() -> None:
    batch = make_batch(8, 2, 4)
    batch.response_mask[:, 3] = 0  # 3 valid tokens per row
    cfg = load_config(None, ["learner.num_learners=2", "algorithm.minibatches=2", "data.prompts_per_step=2"])
    counts = minibatch_counts(batch, cfg)
    assert [(c.tokens, c.seqs) for c in counts] == [(12, 4), (12, 4)]


def test_rollout_metrics() -> None:
    batch = make_batch(2, 2, 3)
    batch.rewards = torch.tensor([1.0, 3.0])
    batch.routing_weights = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    m = rollout_metrics(batch, ("openness_high", "openness_low"), gen_seconds=2.0)
    assert m["reward/mean"] == 2.0 and m["rollout/tokens_per_s"] == 3.0
    assert m["router/weight/openness_high"] == 0.75
    assert abs(m["router/entropy"] - torch.log(torch.tensor(2.0)).item() / 2) < 1e-6


def test_ppo_advantages_are_gae_over_kl_shaped_token_rewards() -> None:
    batch = make_batch(2, 2, 3)
    batch.response_mask[1, 2] = 0  # row 1 has 2 tokens
    batch.rewards = torch.tensor([1.0, 2.0])
    batch.old_logprobs = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -1.0, 0.0]])
    batch.ref_logprobs = torch.full((2, 3), -1.0)
    batch.values = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.0]])
    overrides = ["algorithm.name=ppo", "algorithm.kl.placement=reward", "algorithm.kl.estimator=k1"]
    cfg = load_config(None, [*overrides, "algorithm.kl.coef=0.5", "algorithm.lam=1.0", "algorithm.gamma=1.0"])
    compute_advantages(batch, cfg.algorithm)
    # row 0: k1 = 1 per token -> token rewards [-0.5, -0.5, 1 - 0.5]; lam = gamma = 1: A_t = sum_{s>=t} r_s - V_t
    # -> returns [-0.5, 0, 0.5]; row 1: k1 = 0 -> token rewards [0, 2] -> returns [2, 2]
    assert batch.token_rewards.tolist() == [[-0.5, -0.5, 0.5], [0.0, 2.0, 0.0]]
    assert batch.returns.tolist() == [[-0.5, 0.0, 0.5], [2.0, 2.0, 0.0]]
    raw = torch.tensor([[-1.0, -0.5, 0.0], [2.0, 1.0, 0.0]])  # returns - values, 0 at padding
    valid = raw[batch.response_mask.bool()]
    expected = (raw - valid.mean()) / valid.std()
    torch.testing.assert_close(batch.advantages[batch.response_mask.bool()], expected[batch.response_mask.bool()])
    cfg = load_config(None, [*overrides, "algorithm.kl.coef=0.5", "algorithm.whiten_advantages=false"])
    compute_advantages(batch, cfg.algorithm)
    assert batch.advantages[1, 2] == 0 and batch.advantages[0, 2] == 0.5 - 0.5  # last token: r - V
