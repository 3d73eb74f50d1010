"""The fallback list: the most popular items, then a category-diverse sample of the catalog.

Refreshed in the background and served from memory, so a cold user gets a defined answer and
Recommend still answers while Milvus is away.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence

from visrec.gateway.core.active_index import ActiveIndex, stop_task
from visrec.platform.domain import IndexInfo, Item
from visrec.platform.errors import VisrecError
from visrec.platform.ports import VectorStore

log = logging.getLogger(__name__)
SAMPLE = 4000  # items read to build the diverse part


def round_robin_by_category(items: list[Item]) -> list[Item]:
    """One item per category in turn; within a category a stable pseudo-random order."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in sorted(items, key=lambda i: hashlib.sha256(i.id.encode()).hexdigest()):
        groups[it.category].append(it)
    out: list[Item] = []
    queues = [groups[c] for c in sorted(groups)]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


class PopularItems:
    def __init__(self, store: VectorStore, index: ActiveIndex, refresh_s: float = 30.0,
                 size: int = 500) -> None:
        self._store = store
        self._index = index
        self._refresh_s = refresh_s
        self._size = size
        self._pools: dict[str, list[tuple[Item, float]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def forget(self, ids: Sequence[str]) -> None:
        """Deleted items leave every cached list at once (this replica's)."""
        gone = set(ids)
        for collection, entries in self._pools.items():
            self._pools[collection] = [(it, s) for it, s in entries if it.id not in gone]

    def pool(self, collection: str) -> list[tuple[Item, float]]:
        """(item, popularity in [0, 1]) best first; empty before the first refresh."""
        return self._pools.get(collection, [])

    async def ensure(self, index: IndexInfo) -> list[tuple[Item, float]]:
        if index.collection not in self._pools:
            await self.refresh(index)
        return self.pool(index.collection)

    async def refresh(self, index: IndexInfo | None = None) -> None:
        index = index or await self._index.current()
        popular = await self._store.most_popular(self._size)
        found = await self._store.get_items(index, [i for i, _ in popular]) if popular else {}
        top = max((s for _, s in popular), default=0.0) or 1.0
        entries = [(found[i], s / top) for i, s in popular if i in found]
        taken = {it.id for it, _ in entries}
        sample = await self._store.sample_items(index, (), SAMPLE)
        diverse = [it for it in round_robin_by_category(sample) if it.id not in taken]
        self._pools[index.collection] = entries + [(it, 0.0) for it in diverse[: self._size]]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="popular-refresh")

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.refresh()
            except VisrecError as e:  # keep the last list while Milvus is away
                log.warning("could not refresh the popular items: %s", e)
            await asyncio.sleep(self._refresh_s)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
