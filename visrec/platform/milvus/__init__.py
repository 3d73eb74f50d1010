"""Milvus adapters both services use, split by who uses them, over one shared connection.

- ``MilvusVectorStore`` (serving reads + user state): what the gateway's core needs.
- ``MilvusItemWriter``: online item writes (the gateway's UpsertItems / DeleteItems, the
  rollout's catch-up).
- ``MilvusCatalogChanges``: the online changes and their images (the gateway writes them,
  ingest and rollout apply them).
- ``schema``: every collection's fields and rows, in one module.

The jobs' own adapters (index administration, batch writes, whole-collection reads) extend
these in ``visrec.export.milvus``.
"""

from __future__ import annotations

from visrec.platform.milvus.catalog_changes import MilvusCatalogChanges
from visrec.platform.milvus.connection import MilvusConnection
from visrec.platform.milvus.items import MilvusItemWriter
from visrec.platform.milvus.serving import MilvusServingStore
from visrec.platform.milvus.user_state import MilvusUserStore


class MilvusVectorStore(MilvusServingStore, MilvusUserStore):
    """The gateway's store: the serving reads and the user-state writes, one connection."""

    def __init__(self, db: MilvusConnection) -> None:
        MilvusServingStore.__init__(self, db)
        MilvusUserStore.__init__(self, db)

    @classmethod
    def connect(cls, uri: str, token: str = "", timeout_s: float = 5.0) -> MilvusVectorStore:
        return cls(MilvusConnection(uri, token, timeout_s))


__all__ = ["MilvusCatalogChanges", "MilvusConnection", "MilvusItemWriter",
           "MilvusServingStore", "MilvusUserStore", "MilvusVectorStore"]
