"""A bounded memo for the hot path, owned by the object that uses it."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(dict[K, V]):
    """``memo[key]`` is ``make(key)``, computed once; emptied when ``limit`` keys are held.

    A hit is one dict lookup in C (no method call: a miss goes through
    ``__missing__``). Emptying all at once rather than evicting one by one
    keeps that so: what the callers remember (encoded times, the validity
    windows of one second) is made again in microseconds, and the values
    already handed out stay valid.
    """

    __slots__ = ("limit", "make")

    def __init__(self, limit: int, make: Callable[[K], V]) -> None:
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        super().__init__()
        self.limit = limit
        self.make = make

    def __missing__(self, key: K) -> V:
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.make(key)
        return value
