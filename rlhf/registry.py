"""A tiny name -> function registry, one instance per algorithm family (advantage, kl_estimator, loss_agg, ...).

Each family module creates ``Registry("<family>")`` and exposes ``register_<family> = REG.register`` and
``get_<family> = REG.get``. Config validation and docs read their option lists from ``.names()``, so there is one
dispatch path and no hand-written list of options that can drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Name -> function table for one family. Registering a taken name or looking up an unknown one raises."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: ``@REG.register("grpo")`` stores the function under ``name`` and returns it unchanged.

        Raises ValueError if ``name`` is already registered in this family (even for the same function).
        """

        def decorator(fn: F) -> F:
            if name in self._entries:
                raise ValueError(
                    f"{self.family} {name!r} is already registered (by {self._entries[name].__qualname__}); "
                    "pick another name"
                )
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:
        """The function registered under ``name``; ValueError listing the registered names if there is none."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.family} {name!r}; registered: {', '.join(self.names()) or '(none)'}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, names={list(self._entries)})"
