"""Waiting and time bounds that survive a loaded 2-core runner.

- Wait for a condition, not for a guessed time: ``await eventually(probe, within_s=...)`` polls
  until the probe returns something truthy (and returns it); ``within_s`` is how long a broken
  system gets before the test fails, not how long a working one is expected to take.
- Bound what a test measures by what it measured itself in the same run (an idle baseline, the
  calls before a fault), never by a constant tuned on an idle machine: ``upper_bound``,
  ``refilled``.
- No performance is asserted in tests: benchmarks (``python -m bench``) measure it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def eventually(probe: Callable[[], T | Awaitable[T]], *, within_s: float,
                     every_s: float = 0.05, what: str = "") -> T:
    """Call ``probe`` (a function or a coroutine function) until it returns something truthy
    and return that; after ``within_s`` fail with its last value or exception."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            last: object = value
            if value:
                return value  # type: ignore[return-value]
        except AssertionError as e:  # a probe may assert: retried like a falsy value
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or getattr(probe, '__name__', 'condition')} not true "
                                 f"within {within_s:g} s; last: {last!r}")
        await asyncio.sleep(every_s)


def wait_until(probe: Callable[[], T], *, within_s: float, every_s: float = 0.05,
               what: str = "") -> T:
    """``eventually`` for synchronous code."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            last: object = probe()
            if last:
                return last  # type: ignore[return-value]
        except AssertionError as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or getattr(probe, '__name__', 'condition')} not true "
                                 f"within {within_s:g} s; last: {last!r}")
        time.sleep(every_s)


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.s``: the seconds the block took."""

    def __enter__(self) -> Stopwatch:
        self._start, self.s = time.monotonic(), 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.monotonic() - self._start


def refilled(elapsed_s: float, rate_per_s: float) -> int:
    """The most tokens a bucket refilling at ``rate_per_s`` can have gained during a measured
    ``elapsed_s`` (one more for a refill landing on the boundary)."""
    return math.floor(elapsed_s * rate_per_s) + 1


def upper_bound(samples: Sequence[float], *, floor: float, q: float = 0.99) -> float:
    """A bound from a baseline measured in the same test: the ``q`` quantile of ``samples``,
    and never under ``floor`` (what an idle machine needs)."""
    if len(samples) < 2:
        return max(floor, *samples) if samples else floor
    return max(floor, statistics.quantiles(samples, n=100, method="inclusive")[
        min(98, max(0, round(q * 100) - 1))])
