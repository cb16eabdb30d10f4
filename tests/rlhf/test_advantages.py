"""Advantage estimators: hand-computed cases, naive python-loop references, padding, dispatch errors."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlhf.advantages import AdvantageInputs, gae, get_advantage, grpo

NAN = float("nan")

# Two interleaved groups of G = 3 (non-contiguous ids):
#   group 0 rewards [1, 2, 3]: mean 2, deviations [-1, 0, 1], unbiased var (1 + 0 + 1) / 2 = 1, std 1
#   group 1 rewards [0, 0, 3]: mean 1, deviations [-1, -1, 2], unbiased var (1 + 1 + 4) / 2 = 3, std sqrt(3)
GROUP_IDS = torch.tensor([0, 1, 0, 1, 0, 1])
REWARDS = torch.tensor([1.0, 0.0, 2.0, 0.0, 3.0, 3.0])
CENTRED = [-1.0, -1.0, 0.0, -1.0, 1.0, 2.0]


def _mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()  # (B, T) right-padded


def test_grpo_group_hand_values() -> None:
    mask = _mask([3, 1, 2, 3, 3, 0], T=3)
    adv, returns = grpo(AdvantageInputs(response_mask=mask, rewards=REWARDS, group_ids=GROUP_IDS), eps=0.0)
    s3 = math.sqrt(3.0)
    per_seq = torch.tensor([-1.0, -1 / s3, 0.0, -1 / s3, 1.0, 2 / s3])
    torch.testing.assert_close(adv, per_seq.unsqueeze(1) * mask)  # broadcast over tokens, 0 at padding
    assert adv is returns


def test_grpo_dr_grpo_and_batch_hand_values() -> None:
    mask = torch.ones(6, 2)
    inputs = AdvantageInputs(response_mask=mask, rewards=REWARDS, group_ids=GROUP_IDS)
    dr, _ = grpo(inputs, scale_by_std=False)  # Dr.GRPO: centred rewards only
    torch.testing.assert_close(dr[:, 0], torch.tensor(CENTRED))
    # batch: centred [-1, -1, 0, -1, 1, 2] has mean 0, squared sum 8, unbiased var 8 / 5 = 1.6
    batch, _ = grpo(inputs, normalize="batch", eps=0.0)
    torch.testing.assert_close(batch[:, 1], torch.tensor(CENTRED) / math.sqrt(1.6))


def test_grpo_singleton_group_and_constant_group_give_zero() -> None:
    inputs = AdvantageInputs(
        response_mask=torch.ones(3, 1), rewards=torch.tensor([5.0, 2.0, 2.0]), group_ids=torch.tensor([7, 9, 9])
    )
    adv, _ = grpo(inputs)  # group 7: one sample, std 0 -> 0 / eps; group 9: equal rewards -> 0
    assert torch.equal(adv, torch.zeros(3, 1))


def grpo_loop_reference(
    rewards: list[float], group_ids: list[int], mask: torch.Tensor, *, scale_by_std: bool, normalize: str, eps: float
) -> torch.Tensor:
    """Naive GRPO: python lists and the statistics module, one sequence at a time."""
    centred = []
    for i, gid in enumerate(group_ids):
        group = [r for r, g in zip(rewards, group_ids, strict=True) if g == gid]
        centred.append(rewards[i] - sum(group) / len(group))
    out = []
    for i, gid in enumerate(group_ids):
        if not scale_by_std:
            std = None
        elif normalize == "group":
            group = [r for r, g in zip(rewards, group_ids, strict=True) if g == gid]
            std = statistics.stdev(group) if len(group) > 1 else 0.0  # Bessel (n - 1)
        else:
            std = statistics.stdev(centred)
        out.append(centred[i] if std is None else centred[i] / (std + eps))
    return torch.tensor(out, dtype=torch.float64).unsqueeze(1) * mask


@pytest.mark.parametrize(("scale_by_std", "normalize"), [(True, "group"), (True, "batch"), (False, "group")])
def test_grpo_matches_loop_reference(scale_by_std: bool, normalize: str) -> None:
    gen = torch.Generator().manual_seed(0)
    num_prompts, G, T = 5, 4, 7
    group_ids = torch.arange(num_prompts).repeat_interleave(G)[torch.randperm(num_prompts * G, generator=gen)]
    rewards = torch.randint(0, 3, (num_prompts * G,), generator=gen).double()  # ties and constant groups likely
    mask = _mask(torch.randint(0, T + 1, (num_prompts * G,), generator=gen).tolist(), T)
    inputs = AdvantageInputs(response_mask=mask, rewards=rewards, group_ids=group_ids)
    adv, _ = grpo(inputs, scale_by_std=scale_by_std, normalize=normalize, eps=1e-4)
    expected = grpo_loop_reference(
        rewards.tolist(), group_ids.tolist(), mask, scale_by_std=scale_by_std, normalize=normalize, eps=1e-4
    )
    torch.testing.assert_close(adv, expected)


def test_gae_hand_values() -> None:
    # gamma = lam = 0.5; row 0 has 2 valid tokens, padding holds NaN
    #   delta_1 = 1 + 0.5 * 0 - 0.25 = 0.75         (V past the last valid token = 0)   A_1 = 0.75
    #   delta_0 = 0 + 0.5 * 0.25 - 0.5 = -0.375     A_0 = -0.375 + 0.25 * 0.75 = -0.1875
    #   returns = A + V = [0.3125, 1.0]
    # row 1: one valid token, r = 2, V = 0.5: A = 2 - 0.5 = 1.5, R = 2
    token_rewards = torch.tensor([[0.0, 1.0, NAN], [2.0, NAN, NAN]])
    values = torch.tensor([[0.5, 0.25, NAN], [0.5, NAN, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    inputs = AdvantageInputs(response_mask=mask, token_rewards=token_rewards, values=values)
    adv, returns = gae(inputs, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.1875, 0.75, 0.0], [1.5, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.3125, 1.0, 0.0], [2.0, 0.0, 0.0]]))


def test_gae_gamma_lam_one_is_monte_carlo() -> None:
    # gamma = lam = 1: A_t = sum_{s >= t} r_s - V_t, R_t = sum_{s >= t} r_s
    token_rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    inputs = AdvantageInputs(response_mask=torch.ones(1, 3), token_rewards=token_rewards, values=values)
    adv, returns = gae(inputs, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0]]))
    torch.testing.assert_close(adv, torch.tensor([[5.5, 4.5, 2.5]]))


def gae_loop_reference(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive GAE: per row, the valid steps only, A_t = sum_l (gamma lam)^l delta_{t+l} written as a double loop."""
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        steps = [t for t in range(values.shape[1]) if mask[b, t]]
        v = [values[b, t].item() for t in steps] + [0.0]  # V past the last valid token = 0
        r = [token_rewards[b, t].item() for t in steps]
        deltas = [r[i] + gamma * v[i + 1] - v[i] for i in range(len(steps))]
        for i, t in enumerate(steps):
            adv[b, t] = sum((gamma * lam) ** l * deltas[i + l] for l in range(len(steps) - i))  # noqa: E741
    return adv, torch.where(mask.bool(), adv + values, 0.0)


def test_gae_matches_loop_reference_with_padding_and_interior_gaps() -> None:
    gen = torch.Generator().manual_seed(1)
    B, T = 6, 9
    token_rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = _mask([9, 5, 1, 0, 7, 3], T)
    mask[4, 2:4] = 0  # an interior masked span (e.g. tool output) inside row 4
    token_rewards[~mask.bool()] = NAN  # padding garbage must not leak
    values[~mask.bool()] = float("inf")
    inputs = AdvantageInputs(response_mask=mask, token_rewards=token_rewards, values=values)
    adv, returns = gae(inputs, gamma=0.9, lam=0.8)
    ref_adv, ref_returns = gae_loop_reference(token_rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(returns, ref_returns)


def test_dispatch_by_name_and_missing_inputs() -> None:
    inputs = AdvantageInputs(response_mask=torch.ones(6, 2), rewards=REWARDS, group_ids=GROUP_IDS)
    adv, _ = get_advantage("grpo")(inputs, scale_by_std=False)
    torch.testing.assert_close(adv[:, 0], torch.tensor(CENTRED))
    with pytest.raises(ValueError, match=r"advantage 'gae' needs AdvantageInputs.token_rewards"):
        get_advantage("gae")(inputs)
    with pytest.raises(ValueError, match="normalize must be 'group' or 'batch'"):
        grpo(inputs, normalize="global")
    with pytest.raises(ValueError, match=r"unknown advantage 'vtrace'; registered: grpo, rloo, reinforce\+\+, gae"):
        get_advantage("vtrace")


def test_rloo_hand_values_and_the_scaled_grpo_identity() -> None:
    # group 0 [1, 2, 3]: baselines (2+3)/2, (1+3)/2, (1+2)/2 = 2.5, 2, 1.5 -> A = -1.5, 0, 1.5
    # group 1 [0, 0, 3]: baselines 1.5, 1.5, 0 -> A = -1.5, -1.5, 3
    mask = _mask([2, 2, 1, 2, 2, 0], T=2)
    inputs = AdvantageInputs(response_mask=mask, rewards=REWARDS, group_ids=GROUP_IDS)
    adv, returns = get_advantage("rloo")(inputs)
    per_seq = torch.tensor([-1.5, -1.5, 0.0, -1.5, 1.5, 3.0])
    torch.testing.assert_close(adv, per_seq.unsqueeze(1) * mask)
    assert adv is returns
    # A_rloo = n / (n - 1) * (r - mean_g): Dr.GRPO's centred reward, scaled by 3/2 for groups of 3
    centred = AdvantageInputs(response_mask=torch.ones(6, 1), rewards=REWARDS, group_ids=GROUP_IDS)
    dr, _ = grpo(centred, scale_by_std=False)
    torch.testing.assert_close(adv[:, 0], 1.5 * dr[:, 0] * mask[:, 0])


def test_rloo_groups_of_one_and_of_two() -> None:
    rewards, groups = torch.tensor([4.0, 1.0, 3.0]), torch.tensor([7, 2, 7])  # group 7 of two, group 2 of one
    adv, _ = get_advantage("rloo")(AdvantageInputs(response_mask=torch.ones(3, 1), rewards=rewards, group_ids=groups))
    assert adv[:, 0].tolist() == [1.0, 0.0, -1.0]  # 4 - 3, no other sample, 3 - 4


def test_reinforce_plus_plus_hand_values() -> None:
    """Reward-to-go with gamma 0.5 over valid tokens (padding and an interior gap skipped), then whitened."""
    token_rewards = torch.tensor([[0.0, -1.0, 4.0], [2.0, NAN, 2.0], [1.0, 5.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 0]])
    adv, returns = get_advantage("reinforce++")(AdvantageInputs(mask, token_rewards=token_rewards), gamma=0.5)
    # row 0: R = [0 + 0.5 * (-1 + 0.5 * 4), -1 + 0.5 * 4, 4] = [0.5, 1, 4]; row 1: [2 + 0.5 * 2, -, 2] = [3, -, 2];
    # row 2: [1]
    expected_returns = torch.tensor([[0.5, 1.0, 4.0], [3.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(returns, expected_returns)
    valid = torch.tensor([0.5, 1.0, 4.0, 3.0, 2.0, 1.0])  # mean 1.9166.., unbiased var
    whitened = (valid - valid.mean()) / torch.sqrt(valid.var() + 1e-8)
    torch.testing.assert_close(adv[mask.bool()], whitened)
    assert (adv[~mask.bool()] == 0).all()
    assert abs(adv[mask.bool()].mean().item()) < 1e-6
