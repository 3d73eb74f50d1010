"""The jobs' Milvus adapters: index administration, the batch side of the item writer, and the
reads of whole collections (profiles, the interaction log) that no request may make. They extend
the serving adapters of ``visrec.platform.milvus`` over the same connection; the gateway image
carries none of this.

- ``MilvusIndexAdmin`` (``admin``): collections, index records, the pointer, the alias.
- ``MilvusBatchWriter``: the item writer plus raw-row upserts, flush and fingerprint scans.
- ``MilvusJobStore``: the serving store plus ``MilvusUserLog``'s profile batches and log reads.
- ``MilvusDatabase``: every role over one connection (what a job opens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from visrec.export.milvus.admin import MilvusIndexAdmin
from visrec.platform.domain import IndexInfo, Interaction, UserProfile
from visrec.platform.milvus import (
    MilvusCatalogChanges,
    MilvusConnection,
    MilvusItemWriter,
    MilvusVectorStore,
    schema,
)
from visrec.platform.milvus.items import PAGE
from visrec.platform.milvus.serving import in_ids


class MilvusBatchWriter(MilvusItemWriter):
    """Batch ingest's writes: rows made by ``schema.item_row``, flushes, fingerprints."""

    def upsert(self, collection: str, rows: Sequence[dict[str, Any]]) -> None:
        """Rows made by ``schema.item_row``; an existing id is replaced."""
        self._db.call(lambda c: c.upsert(collection, list(rows), timeout=self._db.timeout))

    async def fingerprints_of(self, collection: str, ids: Sequence[str]) -> dict[str, str]:
        """id -> stored fingerprint, for those of ``ids`` the collection holds."""
        def call(c: Any) -> dict[str, str]:
            if not ids or not c.has_collection(collection, timeout=self._db.timeout):
                return {}
            self._db.ensure_loaded(c, collection)
            out: dict[str, str] = {}
            for start in range(0, len(ids), PAGE):
                for r in c.query(collection, filter=in_ids(list(ids[start:start + PAGE])),
                                 output_fields=["id", "attributes"],
                                 consistency_level="Strong", timeout=self._db.timeout):
                    out[r["id"]] = schema.fingerprint_of(r)
            return out

        return await self._db.run(call)

    def flush(self, collection: str) -> None:
        self._db.call(lambda c: c.flush(collection, timeout=self._db.timeout))

    def fingerprints(self, collection: str) -> dict[str, str]:
        """id -> the fingerprint stored with each item of the collection ('' where absent)."""
        def call(c: Any) -> dict[str, str]:
            if not c.has_collection(collection, timeout=self._db.timeout):
                return {}
            self._db.ensure_loaded(c, collection)
            return {r["id"]: schema.fingerprint_of(r)
                    for r in self._db.scan(c, collection, ["id", "attributes"])}

        return self._db.call(call)


class MilvusUserLog(MilvusVectorStore):
    """The serving store plus the jobs' reads of every profile and the whole log."""

    def profile_batches(self, index: IndexInfo, since: float = 0.0,
                        batch_size: int = 512) -> Iterator[list[UserProfile]]:
        """Every profile of ``index`` updated at or after ``since``, in batches."""
        collection = schema.users_collection(index)
        out: list[list[UserProfile]] = []

        def call(c: Any) -> None:
            if not c.has_collection(collection, timeout=self._db.timeout):
                return
            self._ensure_users(c, index)
            batch: list[UserProfile] = []
            for r in self._db.scan(c, collection, ["id", "vector", "state"], batch_size,
                                   expr=f"{schema.PROFILE_UPDATED_AT} >= {float(since)!r}"):
                batch.append(schema.profile_from_row(r["id"], r))
                if len(batch) == batch_size:
                    out.append(batch)
                    batch = []
            if batch:
                out.append(batch)

        self._db.call(call)
        yield from out

    def interactions(self) -> list[Interaction]:
        """The whole interaction log (for training and evaluation jobs)."""

        def call(c: Any) -> list[Interaction]:
            out = [schema.event_from_row(r) for r in self._log_rows(c, "", ["data"])]
            return sorted(out, key=lambda e: (e.at, e.event_id))

        return self._db.call(call)


class MilvusDatabase:
    """Every role over one connection: what the jobs and tests open."""

    def __init__(self, uri: str, token: str = "", timeout_s: float = 5.0,
                 index_type: str = "AUTOINDEX") -> None:
        self.connection = MilvusConnection(uri, token, timeout_s)
        self.store = MilvusUserLog(self.connection)
        self.items = MilvusBatchWriter(self.connection)
        self.admin = MilvusIndexAdmin(self.connection, index_type)
        self.changes = MilvusCatalogChanges(self.connection)

    @property
    def uri(self) -> str:
        return self.connection.uri

    async def close(self) -> None:
        await self.connection.close()

    def close_sync(self) -> None:
        self.connection.close_sync()


__all__ = ["MilvusBatchWriter", "MilvusDatabase", "MilvusIndexAdmin", "MilvusUserLog"]
