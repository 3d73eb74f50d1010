"""The jobs' seams to the vector database (ingest, rollout, training, evaluation): index
administration, batch writes, and the reads of whole collections and logs that no request may
make. The gateway never imports them; the real adapters are ``visrec.export.milvus``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from visrec.platform.domain import IndexInfo, Interaction, UserProfile
from visrec.platform.ports import CatalogEditor, CatalogReads, ChangeLog, UserState


class ItemWriter(CatalogEditor, Protocol):
    """Writes items into an index collection (batch ingest, rollout, online changes)."""

    def upsert(self, collection: str, rows: Sequence[dict[str, Any]]) -> None: ...

    def flush(self, collection: str) -> None: ...

    def fingerprints(self, collection: str) -> dict[str, str]:
        """id -> the fingerprint stored with each item ('' where absent)."""
        ...

    async def fingerprints_of(self, collection: str, ids: Sequence[str]) -> dict[str, str]:
        """``fingerprints`` for the given ids only (those the collection holds)."""
        ...


class IndexAdmin(Protocol):
    """Collections, index records and the active pointer (the jobs)."""

    def ensure_items_collection(self, collection: str, dim: int) -> None: ...

    def has_collection(self, collection: str) -> bool: ...

    def count(self, collection: str) -> int: ...

    def vector_dim(self, collection: str) -> int: ...

    def item_vectors(self, collection: str) -> tuple[list[str], np.ndarray]: ...

    def write_index_record(self, info: IndexInfo,
                           extra: Mapping[str, Any] | None = None) -> None: ...

    def read_index_record(self, collection: str) -> dict[str, Any] | None: ...

    def index_info(self, collection: str) -> IndexInfo | None: ...

    def active_index(self) -> IndexInfo | None: ...

    def activate(self, collection: str) -> None: ...

    def mark_building(self, info: IndexInfo) -> None:
        """Gateways write online catalog changes into ``info`` too from now on."""
        ...

    def unmark_building(self, collection: str) -> None: ...

    def point_alias(self, alias: str, collection: str) -> bool: ...


class UserLog(Protocol):
    """The jobs' reads of user state: profile batches (rollout) and the log (training)."""

    def profile_batches(self, index: IndexInfo, since: float = 0.0,
                        batch_size: int = 512) -> Iterator[list[UserProfile]]: ...

    def interactions(self) -> list[Interaction]: ...


class JobStore(CatalogReads, UserState, UserLog, Protocol):
    """The reads and user state the jobs use (verify, profile carry-over, training)."""


class Database(Protocol):
    """Every role over one connection to the vector database (what a job opens)."""

    @property
    def admin(self) -> IndexAdmin: ...

    @property
    def items(self) -> ItemWriter: ...

    @property
    def store(self) -> JobStore: ...

    @property
    def changes(self) -> ChangeLog: ...

    async def close(self) -> None: ...
