"""Policy/value losses and entropy: hand values, NaN padding, and equivalence with TRL 1.16's GRPO loss."""

from __future__ import annotations

import importlib
import math
import types
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import torch

from policies.policy import token_logprobs
from rlhf.aggregation import aggregate
from rlhf.policy_loss import entropy_from_logits, logprobs_and_entropy, policy_loss, value_loss
from rlhf.rollout_correction import rollout_is_weights

NAN = float("nan")


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # clip_low 0.2, clip_high 0.28; four valid tokens (r = ratio, A = advantage), one padded slot per row:
    #   (r=1.5, A=+1): max(-1.5, -1.28) = -1.28   clipped high
    #   (r=0.5, A=+1): max(-0.5, -0.8)  = -0.5    unclipped
    #   (r=0.5, A=-1): max(0.5, 0.8)    =  0.8    clipped low
    #   (r=3.0, A=-1): max(3.0, 1.28)   =  3.0    unclipped; dual clip c=2: min(3.0, 2 * 1) = 2
    old_logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    logprobs = old_logprobs + torch.tensor([[math.log(1.5), math.log(0.5), NAN], [math.log(0.5), math.log(3.0), NAN]])
    advantages = torch.tensor([[1.0], [-1.0]])  # (B, 1) per-sequence advantage
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    return logprobs, old_logprobs, advantages, mask


def test_policy_loss_hand_values_and_metrics() -> None:
    logprobs, old_logprobs, advantages, mask = _hand_case()
    logprobs.requires_grad_(True)
    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -0.5, 0.0], [0.8, 3.0, 0.0]]))
    assert metrics["actor/clip_frac"].item() == pytest.approx(0.5)  # tokens 1 and 3 of 4
    assert metrics["actor/clip_frac_low"].item() == pytest.approx(0.25)
    assert metrics["actor/clip_frac_high"].item() == pytest.approx(0.25)
    assert metrics["actor/dual_clip_frac"].item() == 0.0
    # k3 of KL(old || new) = r - 1 - ln r, averaged over the 4 valid tokens
    approx_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 0.5, 3.0)) / 4
    assert metrics["actor/approx_kl"].item() == pytest.approx(approx_kl, rel=1e-5)
    # d loss / d logprobs = -A * r where the unclipped term is active, 0 where clipped or padded (NaN there)
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5, 0.0], [0.0, 3.0, 0.0]]))


def test_dual_clip_hand_values() -> None:
    logprobs, old_logprobs, advantages, mask = _hand_case()
    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.28, dual_clip=2.0)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -0.5, 0.0], [0.8, 2.0, 0.0]]))  # 3.0 capped at 2 * |A|
    assert metrics["actor/dual_clip_frac"].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        policy_loss(logprobs, old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.2, dual_clip=0.9)


def test_value_loss_hand_values() -> None:
    # clip 0.2: (V=1.5, old=1, R=2): max(0.25, (1.2 - 2)^2 = 0.64) / 2 = 0.32, clipped
    #           (V=1.1, old=1, R=0): inside the range, 1.21 / 2 = 0.605
    #           (V=0.5, old=1, R=0): max(0.25, 0.8^2 = 0.64) / 2 = 0.32, clipped; last slot is padding (NaN)
    values = torch.tensor([[1.5, 1.1], [0.5, NAN]])
    old_values = torch.tensor([[1.0, 1.0], [1.0, NAN]])
    returns = torch.tensor([[2.0, 0.0], [0.0, NAN]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, metrics = value_loss(values, old_values, returns, mask, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.32, 0.605], [0.32, 0.0]]))
    assert metrics["critic/vf_clip_frac"].item() == pytest.approx(2 / 3)
    unclipped, _ = value_loss(values, old_values, returns, mask, clip_range=None)
    torch.testing.assert_close(unclipped, torch.tensor([[0.125, 0.605], [0.125, 0.0]]))


def test_entropy_hand_values_and_naive_formula() -> None:
    uniform = torch.zeros(1, 1, 4)  # H = ln 4
    one_hot = torch.tensor([[[0.0, -math.inf, -math.inf, -math.inf]]])  # banned tokens: H = 0
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4.0))
    assert entropy_from_logits(one_hot).item() == 0.0
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0), requires_grad=True)
    naive = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    fast = entropy_from_logits(logits, chunk_size=4)  # 15 rows in chunks of 4
    torch.testing.assert_close(fast, naive)
    (grad_fast,) = torch.autograd.grad(fast.sum(), logits)
    (grad_naive,) = torch.autograd.grad(naive.sum(), logits)
    torch.testing.assert_close(grad_fast, grad_naive)
    bf16 = entropy_from_logits(logits.detach().bfloat16())
    assert bf16.dtype == torch.float32 and bf16.shape == (3, 5)


# ---- equivalence with TRL 1.16 GRPOTrainer._compute_loss -------------------------------------------------------
# TRL computes, for loss_type in grpo/bnpo/dr_grpo/dapo with beta = 0 and token-level importance sampling:
#   coef_1 = exp(logps - old_logps); coef_2 = clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
#   per_token_loss = -min(coef_1 * A, coef_2 * A), then reduces with the loss-type's normalizer.
# `_compute_loss` is a method that runs the model through `self._get_per_token_logps_and_entropies`; we bind it to a
# SimpleNamespace carrying the attributes it reads and replace that helper with one returning our fixed tensor.
TRL_TO_MODE = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "seq-sum-const", "dapo": "token-mean"}
EPS_LOW, EPS_HIGH, MAX_LEN = 0.2, 0.28, 9


@pytest.fixture(scope="module")
def trl_compute_loss() -> Callable[..., tuple[torch.Tensor, dict]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL warns about the installed vLLM version at import
        grpo_trainer = importlib.import_module("trl.trainer.grpo_trainer")  # a dependency: never skipped

    def compute(
        loss_type: str,
        logprobs: torch.Tensor,  # (B, T) current policy, returned by the patched helper
        old_logprobs: torch.Tensor,  # (B, T)
        advantages: torch.Tensor,  # (B,)
        mask: torch.Tensor,  # (B, T)
        num_items_in_batch: float,
        num_processes: int = 1,
        importance_sampling_ratio: torch.Tensor | None = None,  # (B, T): TRL's vLLM correction, applied in the loss
    ) -> tuple[torch.Tensor, dict]:
        B, T = logprobs.shape
        fake = types.SimpleNamespace(
            loss_type=loss_type,
            beta=0.0,
            epsilon_low=EPS_LOW,
            epsilon_high=EPS_HIGH,
            max_completion_length=MAX_LEN,
            importance_sampling_level="token",
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            aux_loss_enabled=False,
            use_vllm=importance_sampling_ratio is not None,
            vllm_importance_sampling_correction=importance_sampling_ratio is not None,
            _entropy_bonus_enabled=False,
            current_gradient_accumulation_steps=1,
            model=types.SimpleNamespace(training=True),
            args=types.SimpleNamespace(delta=None, steps_per_generation=1),
            accelerator=types.SimpleNamespace(  # gather / reduce = identity: metrics stay local to this rank
                num_processes=num_processes,
                gather=lambda x: x,
                gather_for_metrics=lambda x: x,
                reduce=lambda x, reduction: x,
            ),
            _metrics=defaultdict(lambda: defaultdict(list)),
            _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logprobs, torch.zeros_like(logprobs), None),
        )
        inputs = {
            "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
            "prompt_mask": torch.ones(B, 1, dtype=torch.long),
            "completion_ids": torch.zeros(B, T, dtype=torch.long),
            "completion_mask": mask,
            "advantages": advantages,  # (B,)
            "old_per_token_logps": old_logprobs,
            "num_items_in_batch": torch.tensor(float(num_items_in_batch)),
        }
        if importance_sampling_ratio is not None:
            inputs["importance_sampling_ratio"] = importance_sampling_ratio
        loss = grpo_trainer.GRPOTrainer._compute_loss.__get__(fake)(None, inputs)
        return loss, {key: values[0] for key, values in fake._metrics["train"].items()}

    return compute


def _random_batch(seed: int, B: int = 6, T: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    old_logprobs = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    logprobs = old_logprobs + torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.4  # ratios across both clips
    advantages = torch.randn(B, generator=gen, dtype=torch.float64)
    mask = (torch.arange(T).unsqueeze(0) < torch.tensor([9, 4, 1, 7, 0, 5]).unsqueeze(1)).long()
    return logprobs, old_logprobs, advantages, mask  # padding is finite: TRL multiplies by the mask (NaN * 0 = NaN)


def _ours(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, **agg: Any
) -> tuple[torch.Tensor, dict]:
    """Our pipeline: per-token policy_loss with (B, 1) advantages, then aggregate."""
    per_token_loss, metrics = policy_loss(
        logprobs, old_logprobs, advantages.unsqueeze(1), mask, clip_low=EPS_LOW, clip_high=EPS_HIGH
    )
    return aggregate(per_token_loss, mask, **agg), metrics


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("loss_type", list(TRL_TO_MODE))
def test_matches_trl_grpo_loss(loss_type: str, dtype: torch.dtype, tol: float, trl_compute_loss: Callable) -> None:
    logprobs, old_logprobs, advantages, mask = (x.to(dtype) if x.is_floating_point() else x for x in _random_batch(0))
    trl_logprobs = logprobs.clone().requires_grad_(True)
    trl_loss, trl_metrics = trl_compute_loss(loss_type, trl_logprobs, old_logprobs, advantages, mask, float(mask.sum()))
    ours_logprobs = logprobs.clone().requires_grad_(True)
    agg = {"max_response_len": MAX_LEN}
    if loss_type == "dapo":  # TRL normalizes by num_items_in_batch, the global token count
        agg["global_tokens"] = float(mask.sum())
    our_loss, metrics = _ours(ours_logprobs, old_logprobs, advantages, mask, mode=TRL_TO_MODE[loss_type], **agg)

    torch.testing.assert_close(our_loss, trl_loss, rtol=tol, atol=tol)
    trl_loss.backward()
    our_loss.backward()
    torch.testing.assert_close(ours_logprobs.grad, trl_logprobs.grad, rtol=tol, atol=tol)
    assert metrics["actor/clip_frac"].item() == pytest.approx(trl_metrics["clip_ratio/region_mean"], abs=tol)
    assert metrics["actor/clip_frac_low"].item() == pytest.approx(trl_metrics["clip_ratio/low_mean"], abs=tol)
    assert metrics["actor/clip_frac_high"].item() == pytest.approx(trl_metrics["clip_ratio/high_mean"], abs=tol)
    assert 0 < metrics["actor/clip_frac"].item() < 1  # both branches exercised


def test_matches_trl_dapo_on_two_ranks(trl_compute_loss: Callable) -> None:
    # TRL divides each rank's token sum by num_items_in_batch / num_processes: our global_tokens + dp_size
    logprobs, old_logprobs, advantages, mask = _random_batch(seed=1)
    global_tokens = float(mask.sum())
    for rows in (slice(0, 2), slice(2, 6)):
        args = (logprobs[rows], old_logprobs[rows], advantages[rows], mask[rows])
        trl_loss, _ = trl_compute_loss("dapo", *args, global_tokens, num_processes=2)
        our_loss, _ = _ours(*args, mode="token-mean", global_tokens=global_tokens, dp_size=2)
        torch.testing.assert_close(our_loss, trl_loss, rtol=1e-12, atol=1e-12)


def test_entropy_matches_trl() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trl_utils = importlib.import_module("trl.trainer.utils")
    logits = torch.randn(2, 3, 17, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(entropy_from_logits(logits), trl_utils.entropy_from_logits(logits))


def test_logprobs_and_entropy_equal_the_separate_functions() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(3, 5, 50, generator=gen) * 3, torch.randint(0, 50, (3, 5), generator=gen)
    logprobs, entropy = logprobs_and_entropy(logits, tokens)
    assert torch.equal(logprobs, token_logprobs(logits, tokens))  # bit-equal: ratio 1 against the score pass's
    torch.testing.assert_close(entropy, entropy_from_logits(logits))
    assert logprobs_and_entropy(logits.requires_grad_(), tokens)[1].requires_grad is False


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_logprobs_and_entropy_backward_is_the_analytic_gradient(entropy_grad: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 3, 7, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    tokens = torch.randint(0, 7, (2, 3), generator=gen)

    def outputs(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logprobs, entropy = logprobs_and_entropy(z, tokens, entropy_grad)
        return (logprobs, entropy) if entropy_grad else (logprobs,)

    assert torch.autograd.gradcheck(outputs, (logits,))
    # and against autograd through the separate functions, with weights on both outputs
    w_lp, w_h = (
        torch.randn(2, 3, generator=gen, dtype=torch.float64),
        torch.randn(2, 3, generator=gen, dtype=torch.float64),
    )
    lp, h = logprobs_and_entropy(logits, tokens, entropy_grad)
    (ours,) = torch.autograd.grad((w_lp * lp).sum() + (w_h * h).sum() * entropy_grad, logits)
    reference = (w_lp * token_logprobs(logits, tokens)).sum()
    reference = reference + (w_h * entropy_from_logits(logits)).sum() * entropy_grad
    (expected,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_rollout_correction_matches_trl_vllm_importance_sampling(loss_type: str, trl_compute_loss: Callable) -> None:
    """TRL's token_truncate correction (cap 2) on the same tensors: its ratio clamp(exp(old - sampling), max=2)
    multiplies the per-token loss before the reduction, as ours does (rlhf/rollout_correction.py)."""
    logprobs, old_logprobs, advantages, mask = _random_batch(1)
    sampling = old_logprobs + torch.randn(old_logprobs.shape, generator=torch.Generator().manual_seed(2)).double()
    trl_ratio = torch.exp((old_logprobs - sampling) * mask).clamp(max=2.0)  # TRL's own formula, token_truncate
    trl_logprobs = logprobs.clone().requires_grad_(True)
    trl_loss, _ = trl_compute_loss(
        loss_type, trl_logprobs, old_logprobs, advantages, mask, float(mask.sum()), importance_sampling_ratio=trl_ratio
    )
    weights, metrics = rollout_is_weights(old_logprobs, sampling, mask, level="token", mode="truncate", clip_max=2.0)
    assert 0 < metrics["rollout_is/bounded_frac"].item() < 1  # both sides of the cap exercised
    ours_logprobs = logprobs.clone().requires_grad_(True)
    per_token, _ = policy_loss(
        ours_logprobs, old_logprobs, advantages.unsqueeze(1), mask, clip_low=EPS_LOW, clip_high=EPS_HIGH
    )
    agg = {"global_tokens": float(mask.sum())} if loss_type == "dapo" else {}
    our_loss = aggregate(per_token * weights, mask, mode=TRL_TO_MODE[loss_type], max_response_len=MAX_LEN, **agg)
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-12, atol=1e-12)
    trl_loss.backward()
    our_loss.backward()
    torch.testing.assert_close(ours_logprobs.grad, trl_logprobs.grad, rtol=1e-12, atol=1e-12)
