"""Index administration for the jobs (ingest, rollout, training): item collections, index
records, the active-index pointer and the Milvus alias, counts and full scans."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from visrec.platform.domain import IndexInfo
from visrec.platform.errors import BackendUnavailable
from visrec.platform.milvus import schema
from visrec.platform.milvus.connection import MilvusConnection
from visrec.platform.milvus.expr import quote
from visrec.platform.milvus.serving import read_active_index, read_meta


class MilvusIndexAdmin:
    def __init__(self, db: MilvusConnection, index_type: str = "AUTOINDEX") -> None:
        self._db = db
        self._index_type = index_type

    @property
    def uri(self) -> str:
        return self._db.uri

    # ------------------------------------------------------------------ collections
    def ensure_items_collection(self, collection: str, dim: int) -> None:
        def call(c: Any) -> None:
            if not c.has_collection(collection, timeout=self._db.timeout):
                schema.create_items(c, collection, dim, self._index_type, self._db.timeout)

        self._db.call(call)

    def has_collection(self, collection: str) -> bool:
        return self._db.call(lambda c: bool(c.has_collection(collection,
                                                             timeout=self._db.timeout)))

    def count(self, collection: str) -> int:
        def call(c: Any) -> int:
            self._db.ensure_loaded(c, collection)
            rows = c.query(collection, filter="", output_fields=["count(*)"],
                           consistency_level="Strong", timeout=self._db.timeout)
            return int(rows[0]["count(*)"])

        return self._db.call(call)

    def vector_dim(self, collection: str) -> int:
        def call(c: Any) -> int:
            for f in c.describe_collection(collection, timeout=self._db.timeout)["fields"]:
                if f["name"] == "vector":
                    return int(f["params"]["dim"])
            raise BackendUnavailable(f"collection {collection} has no vector field")

        return self._db.call(call)

    def item_vectors(self, collection: str) -> tuple[list[str], np.ndarray]:
        """Every item id of a collection and its vector (rows in id order), for training."""
        def call(c: Any) -> tuple[list[str], np.ndarray]:
            self._db.ensure_loaded(c, collection)
            # Small batches: Milvus Lite 2.5.1 never answers a 4096 x 1280-d batch (~20 MB).
            rows = sorted(self._db.scan(c, collection, ["id", "vector"], batch_size=256),
                          key=lambda r: r["id"])
            return ([r["id"] for r in rows],
                    np.asarray([r["vector"] for r in rows], dtype=np.float32))

        return self._db.call(call)

    # ------------------------------------------------------------------ records and pointer
    def _put_meta(self, key: str, value: Mapping[str, Any]) -> None:
        def call(c: Any) -> None:
            if not c.has_collection(schema.META_COLLECTION, timeout=self._db.timeout):
                schema.create_meta(c, self._db.timeout)
            c.upsert(schema.META_COLLECTION, [schema.meta_row(key, value)],
                     timeout=self._db.timeout)

        self._db.call(call)

    def write_index_record(self, info: IndexInfo, extra: Mapping[str, Any] | None = None) -> None:
        self._put_meta(schema.index_key(info.collection), schema.index_record(info, extra))

    def read_index_record(self, collection: str) -> dict[str, Any] | None:
        return self._db.call(lambda c: read_meta(self._db, c, schema.index_key(collection)))

    def index_info(self, collection: str) -> IndexInfo | None:
        """The index record of ``collection`` (active or not), None when there is none."""
        record = self.read_index_record(collection)
        return schema.index_info(record) if record is not None else None

    def active_index(self) -> IndexInfo | None:
        return self._db.call(lambda c: read_active_index(self._db, c))

    def mark_building(self, info: IndexInfo) -> None:
        """From now on gateways write online catalog changes into ``info`` too."""
        self._put_meta(schema.BUILDING_PREFIX + info.collection,
                       schema.index_record(info, {"since": time.time()}))

    def unmark_building(self, collection: str) -> None:
        key = schema.BUILDING_PREFIX + collection

        def call(c: Any) -> None:
            if c.has_collection(schema.META_COLLECTION, timeout=self._db.timeout):
                c.delete(schema.META_COLLECTION, filter=f"id == {quote(key)}",
                         timeout=self._db.timeout)

        self._db.call(call)

    def activate(self, collection: str) -> None:
        """Point the gateways at ``collection``: one upsert, atomic for every reader."""
        self._put_meta(schema.POINTER_KEY, schema.pointer_record(collection))

    def point_alias(self, alias: str, collection: str) -> bool:
        """Move (or create) a Milvus alias; False where aliases do not exist (Milvus Lite
        answers UNIMPLEMENTED)."""
        def call(c: Any) -> bool:
            from pymilvus.exceptions import MilvusException

            try:
                existing = c.list_aliases(collection, timeout=self._db.timeout,
                                          db_name=self._db.database).get("aliases", [])
                if alias in existing:
                    return True
                try:
                    with _quiet("pymilvus.decorators"):  # a new alias: the alter is expected
                        c.alter_alias(collection, alias, timeout=self._db.timeout)
                except MilvusException:
                    c.create_alias(collection, alias, timeout=self._db.timeout)
                return True
            except Exception as e:
                if _unimplemented(e):
                    return False
                raise

        return self._db.call(call)

    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` names, or None (no such alias, or Milvus Lite). Asked per
        collection with the database named (describe_alias cannot carry it in pymilvus)."""
        def call(c: Any) -> str | None:
            try:
                with _quiet("pymilvus.decorators"):
                    for collection in c.list_collections(timeout=self._db.timeout):
                        if alias in c.list_aliases(collection, timeout=self._db.timeout,
                                                   db_name=self._db.database).get("aliases", []):
                            return str(collection)
            except Exception:
                return None
            return None

        return self._db.call(call)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a library logger for a call whose failure is expected and handled."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _unimplemented(error: BaseException) -> bool:
    """The server does not have this call (by gRPC status code, however pymilvus wraps it)."""
    import grpc

    for e in (error, error.__cause__):
        if isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)) \
                and e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return True
    return False
