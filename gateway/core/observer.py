"""Where the core reports what it did (the gateway's Prometheus metrics implement it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Observer(Protocol):
    def stage(self, name: str, seconds: float) -> None: ...

    def served(self, experiment: str, arm: str, policy: str, items: int,
               degraded: str) -> None: ...

    def interaction(self, experiment: str, arm: str, policy: str, kind: str,
                    counted: bool) -> None: ...

    def catalog_change(self, op: str, items: int) -> None: ...


class NullObserver:
    def stage(self, name: str, seconds: float) -> None:
        pass

    def served(self, experiment: str, arm: str, policy: str, items: int,
               degraded: str) -> None:
        pass

    def interaction(self, experiment: str, arm: str, policy: str, kind: str,
                    counted: bool) -> None:
        pass

    def catalog_change(self, op: str, items: int) -> None:
        pass


class Stages:
    """``with stages("ann"): ...`` reports the block's duration as that stage."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._observer.stage(name, time.perf_counter() - start)
