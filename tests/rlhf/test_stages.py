from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch

from rlhf.config import load_config
from rlhf.placement import ActorGroups
from rlhf.stages import (
    category_means,
    compute_advantages,
    minibatch_counts,
    penalise_overlong,
    rewards_and_scores,
    rollout_metrics,
)
from tests.rlhf.test_batch import make_batch


# Stand-ins for the reward and learner actors, to test how rewards_and_scores waits on them (real Ray; the real
# actors run this stage in tests/rlhf/test_grpo.py's end-to-end runs).
@ray.remote(num_cpus=0)
class StandInReward:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def score(self, prompts: list[str], completions: list[str], category: list) -> SimpleNamespace:
        if self.fail:
            raise ValueError("reward/validation returned NaN")
        return SimpleNamespace(rewards=torch.tensor([float(len(c)) for c in completions]), components={})


@ray.remote(num_cpus=0)
class StandInLearner:
    def __init__(self, release: str | None = None) -> None:
        self.release = release

    def score(self, shard) -> dict[str, torch.Tensor]:
        if self.release is not None:  # holds until the test releases it (or 120 s), then says it finished
            deadline = time.monotonic() + 120
            while not Path(self.release).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            Path(self.release + ".finished").touch()
        return {"ref_logprobs": shard.prompt_ids[:, :1].float().expand(-1, shard.response_len)}


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
    compute_advantages(batch, cfg.algorithm, kl_coef=0.0)  # the driver's (adaptive) beta overrides the config's
    assert torch.equal(batch.advantages, torch.zeros(2, 3))
    cfg = load_config(None, ["algorithm.kl.placement=loss"])
    compute_advantages(batch, cfg.algorithm)
    assert torch.equal(batch.advantages, torch.zeros(2, 3))  # equal rewards, no KL in the reward


def test_rloo_and_reinforce_plus_plus_advantages_from_the_config() -> None:
    batch = make_batch(4, 2, 3)  # groups [0, 0, 1, 1]
    batch.response_mask[3, 2] = 0
    batch.rewards = torch.tensor([1.0, 3.0, 0.0, 4.0])
    batch.old_logprobs = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [0.0] * 3, [0.0] * 3])
    batch.ref_logprobs = torch.full((4, 3), -1.0)
    kl = ["algorithm.kl.placement=reward", "algorithm.kl.coef=0.5", "algorithm.kl.estimator=k1"]
    compute_advantages(batch, load_config(None, ["algorithm.advantage=rloo"]).algorithm)
    assert batch.advantages[:, 0].tolist() == [-2.0, 2.0, -4.0, 4.0]  # r - the other sample's r
    compute_advantages(batch, load_config(None, ["algorithm.advantage=rloo", *kl]).algorithm)
    # k1 = 1 a token on rows 0, 2, 3 (3, 3, 2 tokens): rewards 1 - 1.5, 3, 0 - 1.5, 4 - 1
    assert batch.advantages[:, 0].tolist() == [-3.5, 3.5, -4.5, 4.5]
    compute_advantages(batch, load_config(None, ["algorithm.advantage=reinforce++", *kl]).algorithm)
    # per-token rewards -0.5 a token where k1 = 1, the sequence reward on the last token; summed to go
    expected = torch.tensor([[-0.5, 0.0, 0.5], [3.0, 3.0, 3.0], [-1.5, -1.0, -0.5], [3.0, 3.5, 0.0]])
    torch.testing.assert_close(batch.returns, expected)
    valid = batch.response_mask.bool()
    whitened = (expected[valid] - expected[valid].mean()) / torch.sqrt(expected[valid].var() + 1e-8)
    torch.testing.assert_close(batch.advantages[valid], whitened)  # over the whole batch, not per group
    assert batch.advantages[3, 2] == 0


def test_minibatch_counts_are_global() -> None:
    batch = make_batch(8, 2, 4)
    batch.response_mask[:, 3] = 0  # 3 valid tokens per row
    overrides = ["learner.num_learners=2", "algorithm.minibatches=2", "data.prompts_per_step=2"]
    cfg = load_config(None, overrides)
    counts = minibatch_counts(batch, cfg)
    assert [(c.tokens, c.seqs) for c in counts] == [(12, 4), (12, 4)]
    batch.truncated[[0, 6]] = True  # cut off: a reply in each minibatch (rank 0's first, rank 1's second)
    assert [c.tokens for c in minibatch_counts(batch, cfg)] == [12, 12]  # trained on unless mask_truncated
    masked = load_config(None, [*overrides, "algorithm.overlong.mask_truncated=true"])
    assert [(c.tokens, c.seqs) for c in minibatch_counts(batch, masked)] == [(9, 4), (9, 4)]


def test_the_soft_overlong_penalty_lowers_the_rewards_of_long_replies_before_the_advantages() -> None:
    batch = make_batch(4, 2, 8)
    batch.group_ids = torch.zeros(4, dtype=torch.long)
    batch.response_mask = (torch.arange(8)[None, :] < torch.tensor([[3], [6], [7], [8]])).long()
    batch.rewards = torch.ones(4)
    cfg = load_config(None, ["rollout.max_new_tokens=8", "algorithm.overlong.buffer=4", "algorithm.overlong.penalty=2"])
    metrics = penalise_overlong(batch, cfg)
    # lengths 3, 6, 7, 8 against a penalty-free span of 8 - 4 = 4 tokens: 0, -2 * 2/4, -2 * 3/4, -2
    assert batch.rewards.tolist() == [1.0, 0.0, -0.5, -1.0] and metrics == {"reward/overlong": -1.125}
    compute_advantages(batch, cfg.algorithm)
    assert batch.advantages[0, 0] > batch.advantages[1, 0] > batch.advantages[2, 0] > batch.advantages[3, 0]
    batch.rewards = torch.ones(4)
    assert penalise_overlong(batch, load_config(None, ["rollout.max_new_tokens=8"])) == {}  # off by default
    assert batch.rewards.tolist() == [1.0] * 4


def test_rollout_metrics() -> None:
    batch = make_batch(2, 2, 3)
    batch.rewards = torch.tensor([1.0, 3.0])
    batch.routing_weights = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    batch.response_mask[1, 2] = 0  # row 0 was cut off at the limit of 3 tokens, row 1 stopped after 2
    batch.truncated[0] = True
    m = rollout_metrics(batch, ("openness_high", "openness_low"), gen_seconds=2.0)
    assert m["reward/mean"] == 2.0 and m["rollout/tokens_per_s"] == 2.5 and m["response/clip_frac"] == 0.5
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


def test_rewards_and_scores_in_turn_or_at_once_fill_both_and_time_each(ray_local) -> None:
    batch = make_batch(4, 2, 3)
    batch.prompts, batch.categories = ["p"] * 4, [None] * 4
    batch.completions = ["a", "bb", "ccc", "dddd"]
    actors = ActorGroups([StandInLearner.remote(), StandInLearner.remote()], [], StandInReward.remote(), None)
    for overlap in (False, True):
        batch.rewards = batch.ref_logprobs = None
        timings: dict[str, float] = {}
        scored = rewards_and_scores(actors, batch, timings, overlap=overlap)
        assert batch.rewards is scored.rewards and batch.rewards.tolist() == [1.0, 2.0, 3.0, 4.0]
        assert batch.ref_logprobs[:, 0].tolist() == [1.0, 3.0, 5.0, 7.0]  # both shards, in row order
        assert set(timings) == {"timing/reward", "timing/ref"}


def test_a_failing_reward_raises_while_the_learners_still_score(ray_local, tmp_path) -> None:
    release = str(tmp_path / "release")
    batch = make_batch(2, 2, 3)
    batch.prompts, batch.categories = ["p"] * 2, [None] * 2
    actors = ActorGroups([StandInLearner.remote(release)], [], StandInReward.remote(fail=True), None)
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match="returned NaN"):
            rewards_and_scores(actors, batch, {}, overlap=True)
        assert not Path(release + ".finished").exists()  # raised without waiting for the learner
    finally:
        Path(release).touch()


def test_category_means_leave_out_rows_without_a_category() -> None:
    values = torch.tensor([1.0, 3.0, 5.0, 7.0])
    means = category_means(values, ["grief", "work", "grief", None], "eval/category/{}/reward")
    assert means == {"eval/category/grief/reward": 3.0, "eval/category/work/reward": 3.0}
