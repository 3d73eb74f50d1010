"""Milvus adapters, split by who uses them, over one shared connection.

- ``MilvusVectorStore`` (serving reads + user state): what the gateway's core needs.
- ``MilvusItemWriter``: upserts items (ingest, rollout, the gateway's online changes).
- ``MilvusIndexAdmin``: collections, index records, the pointer, the alias (ingest, rollout).
- ``MilvusCatalogChanges``: the online changes and their images (the gateway writes them,
  ingest and rollout apply them).
- ``schema``: every collection's fields and rows, in one module.
"""

from __future__ import annotations

from visrec.gateway.adapters.milvus.admin import MilvusIndexAdmin
from visrec.gateway.adapters.milvus.catalog_changes import MilvusCatalogChanges
from visrec.gateway.adapters.milvus.connection import MilvusConnection
from visrec.gateway.adapters.milvus.items import MilvusItemWriter
from visrec.gateway.adapters.milvus.serving import MilvusServingStore
from visrec.gateway.adapters.milvus.user_state import MilvusUserStore


class MilvusVectorStore(MilvusServingStore, MilvusUserStore):
    """The gateway's store: the serving reads and the user-state writes, one connection."""

    def __init__(self, db: MilvusConnection) -> None:
        MilvusServingStore.__init__(self, db)
        MilvusUserStore.__init__(self, db)

    @classmethod
    def connect(cls, uri: str, token: str = "", timeout_s: float = 5.0) -> MilvusVectorStore:
        return cls(MilvusConnection(uri, token, timeout_s))


class MilvusDatabase:
    """Every role over one connection: what the jobs and tests open."""

    def __init__(self, uri: str, token: str = "", timeout_s: float = 5.0,
                 index_type: str = "AUTOINDEX") -> None:
        self.connection = MilvusConnection(uri, token, timeout_s)
        self.store = MilvusVectorStore(self.connection)
        self.items = MilvusItemWriter(self.connection)
        self.admin = MilvusIndexAdmin(self.connection, index_type)
        self.changes = MilvusCatalogChanges(self.connection)

    @property
    def uri(self) -> str:
        return self.connection.uri

    async def close(self) -> None:
        await self.connection.close()

    def close_sync(self) -> None:
        self.connection.close_sync()


__all__ = ["MilvusCatalogChanges", "MilvusConnection", "MilvusDatabase", "MilvusIndexAdmin",
           "MilvusItemWriter",
           "MilvusServingStore", "MilvusUserStore", "MilvusVectorStore"]
