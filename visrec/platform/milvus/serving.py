"""The gateway's reads: the active index, items and their vectors, ANN search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visrec.platform.domain import Condition, IndexInfo, Item, ScoredItem
from visrec.platform.errors import BackendUnavailable
from visrec.platform.milvus import schema
from visrec.platform.milvus.connection import MilvusConnection
from visrec.platform.milvus.expr import compile_filter, quote


def read_meta(db: MilvusConnection, c: Any, key: str) -> dict[str, Any] | None:
    """One record of the metadata collection (Strong: a pointer switch is seen at once)."""
    if not c.has_collection(schema.META_COLLECTION, timeout=db.timeout):
        return None
    db.ensure_loaded(c, schema.META_COLLECTION)
    rows = c.query(schema.META_COLLECTION, filter=f"id == {quote(key)}",
                   output_fields=["value"], consistency_level="Strong", timeout=db.timeout)
    return schema.meta_value(rows[0]) if rows else None


def read_active_index(db: MilvusConnection, c: Any) -> IndexInfo | None:
    """The index the pointer names: one Strong query for the pointer and every index record
    (a handful of rows) once the metadata collection is known to exist."""
    if schema.META_COLLECTION not in db.known:
        if not c.has_collection(schema.META_COLLECTION, timeout=db.timeout):
            return None
        db.ensure_loaded(c, schema.META_COLLECTION)
        db.known.add(schema.META_COLLECTION)
    try:
        rows = c.query(schema.META_COLLECTION,
                       filter=f"id == {quote(schema.POINTER_KEY)} or "
                              f'id like "{schema.index_key("")}%"',
                       output_fields=["id", "value"], consistency_level="Strong",
                       timeout=db.timeout)
    except Exception:
        db.known.discard(schema.META_COLLECTION)  # dropped? ask again next time
        raise
    records = {r["id"]: schema.meta_value(r) for r in rows}
    pointer = records.get(schema.POINTER_KEY)
    if pointer is None:
        return None
    record = records.get(schema.index_key(pointer["collection"]))
    if record is None:
        raise BackendUnavailable(
            f"the active pointer names {pointer['collection']}, which has no index record")
    info = schema.index_info(record)
    db.ensure_loaded(c, info.collection)
    return info


# Reads of an index wait for this process's own last write to it (an item upserted through a
# replica is searchable through that replica as soon as UpsertItems returns) and for nothing
# else: other processes' writes are seen once the query nodes have consumed them (pymilvus sends
# the "eventually" timestamp when this process has not written the collection).
READS = "Session"


def in_ids(ids: Sequence[str], field: str = "id") -> str:
    return f"{field} in [{', '.join(quote(i) for i in ids)}]"


class MilvusServingStore:
    def __init__(self, db: MilvusConnection) -> None:
        self._db = db

    @property
    def uri(self) -> str:
        return self._db.uri

    async def active_index(self) -> IndexInfo | None:
        return await self._db.run(lambda c: read_active_index(self._db, c))

    async def building_indexes(self) -> list[IndexInfo]:
        """Indexes a rollout is filling now: online catalog changes must reach them too."""
        def call(c: Any) -> list[IndexInfo]:
            if not c.has_collection(schema.META_COLLECTION, timeout=self._db.timeout):
                return []
            self._db.ensure_loaded(c, schema.META_COLLECTION)
            # Not Strong (which waits for the ~200 ms time tick on every UpsertItems): a mark
            # can be missed for a moment after the rollout wrote it, and the rollout's last
            # catch-up waits long enough after marking for every gateway to have seen it.
            rows = c.query(schema.META_COLLECTION,
                           filter=f'id like "{schema.BUILDING_PREFIX}%"',
                           output_fields=["value"], consistency_level=READS,
                           timeout=self._db.timeout)
            return [schema.index_info(schema.meta_value(r)) for r in rows]

        return await self._db.run(call)

    # The request path's reads: pymilvus' asyncio client, in the caller's loop (``read``).
    async def get_vectors(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, np.ndarray]:
        # Not MilvusClient.get(): it quotes string ids without escaping them.
        if not ids:  # `id in []` is a segcore error on Milvus Lite
            return {}
        rows = await self._db.read(lambda c, timeout: c.query(
            index.collection, filter=in_ids(ids), output_fields=["id", "vector"],
            consistency_level=READS, timeout=timeout))
        return {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}

    async def get_items(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, Item]:
        if not ids:
            return {}
        rows = await self._db.read(lambda c, timeout: c.query(
            index.collection, filter=in_ids(ids), output_fields=schema.ITEM_FIELDS,
            consistency_level=READS, timeout=timeout))
        return {r["id"]: schema.item_from_row(r) for r in rows}

    async def neighbours(self, index: IndexInfo, item_id: str, k: int,
                         conditions: Sequence[Condition]) -> list[ScoredItem] | None:
        expr = compile_filter(conditions)

        async def call(c: Any, seconds: float) -> list[Any] | None:
            rows = await c.query(index.collection, filter=in_ids([item_id]),
                                 output_fields=["vector"], consistency_level=READS,
                                 timeout=seconds)
            if not rows:
                return None
            vector = np.asarray(rows[0]["vector"], dtype=np.float32)
            result: list[Any] = await c.search(
                index.collection, data=[vector], anns_field="vector", limit=k, filter=expr,
                output_fields=schema.ITEM_FIELDS, search_params=schema.search_params(k),
                consistency_level=READS, timeout=self._db.timeout)
            return result

        found = await self._db.read(call)
        if found is None:
            return None
        return [ScoredItem(schema.item_from_row(h["entity"], h["id"]), float(h["distance"]))
                for h in found[0]]

    async def search(self, index: IndexInfo, vector: np.ndarray, k: int,
                     conditions: Sequence[Condition], *,
                     with_vectors: bool = False) -> list[ScoredItem]:
        return (await self.search_many(index, [vector], k, conditions,
                                       with_vectors=with_vectors))[0]

    async def search_many(self, index: IndexInfo, vectors: Sequence[np.ndarray], k: int,
                          conditions: Sequence[Condition], *,
                          with_vectors: bool = False) -> list[list[ScoredItem]]:
        expr = compile_filter(conditions)
        fields = [*schema.ITEM_FIELDS, "vector"] if with_vectors else schema.ITEM_FIELDS
        data = [np.asarray(v, dtype=np.float32) for v in vectors]
        found = await self._db.read(lambda c, timeout: c.search(
            index.collection, data=data, anns_field="vector", limit=k, filter=expr,
            output_fields=fields, search_params=schema.search_params(k),
            consistency_level=READS, timeout=timeout))
        return [
            [ScoredItem(schema.item_from_row(h["entity"], h["id"]), float(h["distance"]),
                        np.asarray(h["entity"]["vector"], dtype=np.float32) if with_vectors
                        else None)
             for h in hits]
            for hits in found
        ]

    async def sample_items(self, index: IndexInfo, conditions: Sequence[Condition],
                           limit: int) -> list[Item]:
        expr = compile_filter(conditions)

        def call(c: Any) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = c.query(index.collection, filter=expr,
                                                 output_fields=schema.ITEM_FIELDS,
                                                 limit=min(limit, schema.QUERY_PAGE),
                                                 consistency_level=READS,
                                                 timeout=self._db.timeout)
            return rows

        return [schema.item_from_row(r) for r in await self._db.run(call)]

    async def close(self) -> None:
        await self._db.close()

