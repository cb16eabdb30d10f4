"""The reward interface: what a reward component is, the registry of component factories, and score checking.

Legend: B = completions in the batch (prompts x samples).

A **reward component** is any callable

    fn(prompts: list[str], completions: list[str], **metadata) -> list[float]      # B strings each -> B floats

It is always called with keywords (``fn(prompts=..., completions=..., **metadata)``), exactly as TRL's
``GRPOTrainer`` calls its reward functions, so a TRL-style function such as ``def f(completions, **kwargs)`` works
as is. ``metadata`` holds per-sample lists of length B (e.g. ``category: list[str | None]``); a component must take
``**kwargs`` and ignore the keys it does not use.

**Registration: the registry holds factories, never components.** ``register_reward(name)`` stores a callable
``factory(**options) -> component``; the composer calls it once, with the ``options`` of the config's term, when it is
built. The usual factory is a class: its constructor takes the options as keyword arguments (typed, defaulted,
checked in ``__post_init__``) and its instances are the components, e.g. ``Length(min_words=5)``. Expensive set-up
(a trained reward model's weights) happens once in the factory, never per batch. Option *names* are checked against
the factory's signature when the config is validated; option *values* when the composer builds the factory. A plain
function that needs no options does not need registering: pass it to ``RewardComposer`` as an extra component.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from rlhf.registry import Registry

RewardFn = Callable[..., list[float]]  # fn(prompts=..., completions=..., **metadata) -> B floats
RewardFactory = Callable[..., RewardFn]  # factory(**options) -> RewardFn

REWARDS: Registry[RewardFactory] = Registry("reward")
register_reward = REWARDS.register


class RewardError(RuntimeError):
    """A reward component failed or returned scores that cannot be used; the message names the component."""


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def get_reward(name: str) -> RewardFactory:
    """The factory registered under ``name``; ValueError with a did-you-mean and the registered names otherwise.

    E.g. ``get_reward("lenght")`` -> ``ValueError: unknown reward 'lenght'; did you mean 'length'? registered: ...``
    """
    if name not in REWARDS:
        registered = ", ".join(REWARDS.names()) or "(none)"
        raise ValueError(f"unknown reward {name!r}; {_did_you_mean(name, REWARDS.names())}registered: {registered}")
    return REWARDS.get(name)


def check_reward_options(name: str, options: Mapping[str, Any]) -> None:
    """ValueError if ``options`` are not keyword arguments of reward ``name``'s factory (names only, not values)."""
    factory = get_reward(name)
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the factory takes any keyword; it checks its options itself
    accepted = tuple(n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    for option in options:
        if option not in accepted:
            raise ValueError(
                f"reward {name!r} has no option {option!r}; {_did_you_mean(option, accepted)}"
                f"its options are: {', '.join(accepted) or '(none)'}"
            )


def _as_float(name: str, index: int, value: Any) -> float:
    """One score as a Python float, or RewardError naming the component, the index and the value."""
    if isinstance(value, Tensor) and value.numel() == 1 and not (value.is_complex() or value.dtype == torch.bool):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RewardError(
            f"reward component {name!r}: score at index {index} is {value!r} ({type(value).__name__}), not a number"
        )
    return float(value)


def check_scores(name: str, scores: Any, batch_size: int) -> Tensor:
    """Checks one component's output and returns it as a float32 tensor (B,). Nothing is ever zero-filled.

    Accepts a sequence of B real numbers (Python, numpy or 1-element tensors) or a tensor of shape (B,). Raises
    RewardError naming the component for: not a sequence, wrong length, a non-numeric entry (``None``, ``bool``,
    ``str``, ...), or a value that is NaN, infinite, or overflows float32; the message gives the index and value.

    >>> check_scores("validation", [0.5, 1], batch_size=2)
    tensor([0.5000, 1.0000])
    >>> check_scores("validation", [0.5, float("nan")], batch_size=2)
    Traceback (most recent call last):
    ...
    rewards.base.RewardError: reward component 'validation': score at index 1 is nan (must be finite in float32)
    """
    if isinstance(scores, Tensor):
        if scores.ndim != 1:
            shape = tuple(scores.shape)
            raise RewardError(f"reward component {name!r} returned a tensor of shape {shape}, expected ({batch_size},)")
        scores = list(scores)
    elif isinstance(scores, str | bytes | Mapping) or not hasattr(scores, "__len__"):
        raise RewardError(
            f"reward component {name!r} returned {type(scores).__name__}, expected a list of {batch_size} numbers"
        )
    if len(scores) != batch_size:
        raise RewardError(f"reward component {name!r} returned {len(scores)} scores for a batch of {batch_size}")
    values = [_as_float(name, i, v) for i, v in enumerate(scores)]
    out = torch.tensor(values, dtype=torch.float32).reshape(batch_size)  # (B,)
    bad = (~torch.isfinite(out)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        more = f" ({bad.numel() - 1} more)" if bad.numel() > 1 else ""
        raise RewardError(
            f"reward component {name!r}: score at index {i} is {values[i]!r} (must be finite in float32){more}"
        )
    return out
