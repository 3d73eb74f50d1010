"""The item writer: the one way items get into (and out of) an index collection. Batch ingest,
the rollout and the gateway's online catalog changes all write through it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from visrec.gateway.adapters.milvus import schema
from visrec.gateway.adapters.milvus.connection import MilvusConnection


class MilvusItemWriter:
    def __init__(self, db: MilvusConnection) -> None:
        self._db = db

    def upsert(self, collection: str, rows: Sequence[dict[str, Any]]) -> None:
        """Rows made by ``schema.item_row``; an existing id is replaced."""
        self._db.call(lambda c: c.upsert(collection, list(rows), timeout=self._db.timeout))

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
