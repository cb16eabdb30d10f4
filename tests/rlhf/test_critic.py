from __future__ import annotations

import torch

from rlhf.critic import ValueHead


def test_value_head_starts_at_zero_and_does_not_train_the_actor() -> None:
    head = ValueHead(hidden_size=8, inner_size=4)
    hidden = torch.randn(2, 3, 8, requires_grad=True)
    values = head(hidden)
    assert values.shape == (2, 3) and torch.equal(values, torch.zeros(2, 3))
    (values - 1.0).square().sum().backward()
    assert hidden.grad is None  # detached: the value loss never reaches the policy
    assert head.out.bias.grad is not None and head.out.bias.grad.abs().sum() > 0


def test_value_head_fits_a_target() -> None:
    torch.manual_seed(0)
    head = ValueHead(hidden_size=8, inner_size=16)
    hidden = torch.randn(4, 5, 8)
    target = hidden[..., 0]  # a function of the features
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = (head(hidden) - target).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * target.var().item()
