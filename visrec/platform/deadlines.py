"""One deadline per dependency call (pure: no client library).

A use case that makes several calls to one backend opens a ``budget``: until it ends, every call
an adapter makes is bounded by the budget's end (the client library's own deadline and the
awaiting task's are that same instant), not by a deadline of its own nested inside. Outside a
budget an adapter bounds each call by its configured timeout. The deadline travels in a context
variable, so it reaches the worker threads that run blocking clients (``asyncio.to_thread``
copies the context).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

from visrec.platform.errors import BackendTimeout

_deadline: contextvars.ContextVar[tuple[float, str] | None] = contextvars.ContextVar(
    "visrec_deadline", default=None)


@contextmanager
def budget(seconds: float, what: str = "the vector store") -> Iterator[None]:
    """Every call made inside ends within ``seconds`` of now (an enclosing, earlier deadline
    wins)."""
    end = time.monotonic() + seconds
    outer = _deadline.get()
    if outer is not None and outer[0] < end:
        end, what = outer
    token = _deadline.set((end, what))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining(timeout_s: float) -> float:
    """Seconds the next call may take: ``timeout_s``, or less where a budget ends sooner.
    BackendTimeout when the budget is already spent (no call is started to fail later)."""
    current = _deadline.get()
    if current is None:
        return timeout_s
    end, what = current
    left = end - time.monotonic()
    if left <= 0:
        raise BackendTimeout(f"{what} did not answer within the request's budget")
    return min(timeout_s, left)
