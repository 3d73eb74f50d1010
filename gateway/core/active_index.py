"""Follows the active index pointer: one cached read per refresh interval, not per request, by one
poller per process (the health watch reads what it found, ``answering``, instead of polling too)."""

from __future__ import annotations

import asyncio
import logging
import time

from visrec.platform.domain import IndexInfo
from visrec.platform.errors import (
    BackendTimeout,
    BackendUnavailable,
    FailedPrecondition,
    VisrecError,
)
from visrec.platform.ports import CatalogReads

log = logging.getLogger(__name__)


class ActiveIndex:
    def __init__(self, store: CatalogReads, refresh_s: float = 1.0) -> None:
        self._store = store
        self.refresh_s = refresh_s
        self._current: IndexInfo | None = None
        self._read_at = 0.0
        self._failed_at = -1.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def refresh(self) -> IndexInfo | None:
        async with self._lock:
            info = await self._store.active_index()
            if info != self._current:
                log.info("active index is now %s", info)
            self._current, self._read_at = info, time.monotonic()
            return info

    async def current(self) -> IndexInfo:
        """The active index; reads the pointer when the cached value is missing or stale."""
        info = self._current
        stale = time.monotonic() - self._read_at > self.refresh_s * 5
        # With a pointer in hand and the background loop running, no request waits on a read:
        # if the loop's reads fail, Milvus is away and the pointer cannot have moved without
        # it; the loop notices Milvus's return. Inline reads only without the loop (tests, a
        # loop that died) and for the very first pointer.
        looping = self._task is not None and not self._task.done()
        if info is None or (stale and not looping and self._failed_at <= self._read_at):
            try:
                info = await self.refresh()
            except (BackendUnavailable, BackendTimeout):
                self._failed_at = time.monotonic()
                if info is None:
                    raise
        if info is None:
            raise FailedPrecondition(
                "no catalog has been indexed yet: run visrec-ingest (see README)"
            )
        return info

    @property
    def known(self) -> IndexInfo | None:
        """The last pointer read (no call)."""
        return self._current

    @property
    def answering(self) -> bool:
        """The last read of the pointer succeeded and named an index."""
        return self._current is not None and self._read_at > self._failed_at

    def start(self) -> None:
        """Refresh in the background so a pointer switch is followed within refresh_s."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="active-index-refresh")

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.refresh()
            except VisrecError as e:  # keep serving the last known index while Milvus is away
                self._failed_at = time.monotonic()
                log.warning("could not refresh the active index: %s", e)
            await asyncio.sleep(self.refresh_s)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await stop_task(self._task)
            self._task = None


async def stop_task(task: asyncio.Task[None], wait_s: float = 5.0) -> None:
    """Cancel a background loop and wait for it, boundedly: loops also check a stop flag,
    so even a cancellation lost inside a library call ends them at their next turn."""
    task.cancel()
    await asyncio.wait([task], timeout=wait_s)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.warning("background task %s failed: %r", task.get_name(), task.exception())
