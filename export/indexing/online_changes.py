"""Bring an index up to date with the online catalog changes (UpsertItems, DeleteItems).

The change log holds the latest change of every item changed online, with the images of the
upserted ones. Batch ingest applies it after the catalog file (online wins: an item upserted
online keeps its online fields and photo, a deleted one stays deleted) and a rollout applies it
to the index it builds, so a switch never loses a change nor resurrects a deleted item.

Applying is idempotent and cheap when there is nothing to do: an item an index already holds
with the fingerprint of its latest change (``online:<time>``) is not embedded again. Gateways
write changes concurrently; ``catch_up`` repeats until a pass finds no change it has not
applied, so a change recorded while it ran is not overwritten by an older state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from visrec.export.ports import ItemWriter
from visrec.platform.catalog import online_fingerprint
from visrec.platform.domain import CatalogChange
from visrec.platform.errors import InvalidArgument, VisrecError
from visrec.platform.ports import ChangeLog, Embedder

log = logging.getLogger("visrec.changes")
BATCH = 32


@dataclass
class ChangesReport:
    upserted: set[str] = field(default_factory=set)  # ids whose latest change is an upsert
    deleted: set[str] = field(default_factory=set)  # ids whose latest change is a delete
    embedded: int = 0
    removed: int = 0
    passes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def render(self) -> str:
        return (f"{len(self.upserted)} online upserts ({self.embedded} embedded now), "
                f"{len(self.deleted)} online deletes ({self.removed} removed now)")


async def _embed(embedder: Embedder, changes: ChangeLog, todo: Sequence[CatalogChange],
                 version: str, report: ChangesReport) -> list[tuple[CatalogChange, np.ndarray]]:
    images = await asyncio.gather(*(changes.image(c.item_id) for c in todo))
    ready = [(c, img) for c, img in zip(todo, images, strict=True) if img is not None]
    report.skipped += [(c.item_id, "its image is not in the change log")
                       for c, img in zip(todo, images, strict=True) if img is None]
    if not ready:
        return []
    try:
        vectors = await embedder.embed([img for _, img in ready], model_version=version)
        return [(c, v) for (c, _), v in zip(ready, vectors, strict=True)]
    except InvalidArgument:  # checked when it was upserted; a new model may still refuse it
        out = []
        for c, img in ready:
            try:
                out.append((c, (await embedder.embed([img], model_version=version))[0]))
            except InvalidArgument as e:
                report.skipped.append((c.item_id, str(e)))
        return out


async def _apply(todo: Sequence[CatalogChange], changes: ChangeLog, writer: ItemWriter,
                 embedder: Embedder, collection: str, version: str,
                 ensure: Callable[[int], Awaitable[None]], report: ChangesReport) -> None:
    upserts = [c for c in todo if c.op == "upsert" and c.item is not None]
    deletes = [c.item_id for c in todo if c.op == "delete"]
    if deletes:
        report.removed += len(await writer.remove_items(collection, deletes))
    stored = await writer.fingerprints_of(collection, [c.item_id for c in upserts])
    upserts = [c for c in upserts if stored.get(c.item_id) != online_fingerprint(c.at)]
    for start in range(0, len(upserts), BATCH):
        done = await _embed(embedder, changes, upserts[start:start + BATCH], version, report)
        if not done:
            continue
        await ensure(int(done[0][1].shape[0]))
        await writer.put_items(collection, [(c.item, v) for c, v in done if c.item],
                               [online_fingerprint(c.at) for c, _ in done])
        report.embedded += len(done)


async def catch_up(changes: ChangeLog, writer: ItemWriter, embedder: Embedder,
                   collection: str, version: str, ensure: Callable[[int], Awaitable[None]],
                   max_passes: int = 8) -> ChangesReport:
    """Apply every online change to ``collection`` (embedding with ``version``); ``ensure(dim)``
    is called before the first write (creates the collection when needed)."""
    report = ChangesReport()
    applied: dict[str, float] = {}
    for report.passes in range(1, max_passes + 1):
        latest = await changes.since(0.0)
        todo = [c for c in latest if applied.get(c.item_id) != c.at]
        if not todo:
            report.upserted = {c.item_id for c in latest if c.op == "upsert"}
            report.deleted = {c.item_id for c in latest if c.op == "delete"}
            return report
        await _apply(todo, changes, writer, embedder, collection, version, ensure, report)
        applied.update((c.item_id, c.at) for c in todo)
    raise VisrecError(f"online catalog changes kept arriving through {max_passes} passes over "
                      f"{collection}; run again when they slow down")
