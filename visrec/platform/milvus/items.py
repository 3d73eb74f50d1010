"""The item writer of online catalog changes: the one way items get into (and out of) an index
collection item by item. The gateway's UpsertItems / DeleteItems and the rollout's catch-up
write through it; batch ingest adds its batch side (``visrec.export.milvus.MilvusBatchWriter``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from visrec.platform.domain import Item
from visrec.platform.milvus import schema
from visrec.platform.milvus.connection import MilvusConnection
from visrec.platform.milvus.serving import in_ids

PAGE = 1000  # ids per Milvus call


class MilvusItemWriter:
    def __init__(self, db: MilvusConnection) -> None:
        self._db = db

    def id_problem(self, item_id: str) -> str | None:
        """Why this database cannot hold ``item_id`` as an item changed online, or None."""
        if self._db.is_lite and "'" in item_id:
            # Milvus Lite 2.5.1 writes string primary keys into SQL unescaped when it deletes
            # (and an upsert deletes): such a row could never be replaced or deleted.
            return ("its id contains ', which Milvus Lite cannot delete or replace (a Milvus "
                    "server can)")
        return None

    async def put_items(self, collection: str, items: Sequence[tuple[Item, np.ndarray]],
                        fingerprint: str | Sequence[str] = "") -> None:
        """Items and their vectors (online changes, the catch-up of a rollout); an existing id
        is replaced. ``fingerprint``: one for all items, or one per item."""
        prints = ([fingerprint] * len(items) if isinstance(fingerprint, str)
                  else list(fingerprint))
        rows = [schema.item_row(item, vector, fp)
                for (item, vector), fp in zip(items, prints, strict=True)]

        def call(c: Any) -> None:
            for start in range(0, len(rows), PAGE):
                c.upsert(collection, rows[start:start + PAGE], timeout=self._db.timeout)

        await self._db.run(call)

    async def remove_items(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Delete the items; returns the ids that were there."""
        def call(c: Any) -> set[str]:
            if not ids or not c.has_collection(collection, timeout=self._db.timeout):
                return set()
            self._db.ensure_loaded(c, collection)
            found: set[str] = set()
            for start in range(0, len(ids), PAGE):
                page = list(ids[start:start + PAGE])
                there = sorted({r["id"] for r in c.query(
                    collection, filter=in_ids(page), output_fields=["id"],
                    consistency_level="Strong", timeout=self._db.timeout)})
                if there:
                    c.delete(collection, filter=in_ids(there), timeout=self._db.timeout)
                found.update(there)
            if found:
                # A delete does not advance pymilvus' session timestamp on Milvus 2.3 (its
                # answer carries none), so this process's Session reads could still see the
                # rows. One Strong read waits until the query nodes applied it (~0.4 s on the
                # server); every read after it sees the delete.
                c.query(collection, filter=in_ids(sorted(found)[:1]), output_fields=["id"],
                        consistency_level="Strong", timeout=self._db.timeout)
            return found

        return await self._db.run(call)
