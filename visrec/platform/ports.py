"""The narrow seams to external systems that both services use, split by who uses them. Unit
tests pass in-memory fakes (tests/unit/fakes.py); integration tests the real adapters
(``visrec.platform.milvus``, ``visrec.platform.triton_embedder``). The jobs' own seams (index
administration, batch writes, reads of the whole log) are ``visrec.export.ports``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from visrec.platform.domain import (
    CatalogChange,
    Condition,
    IndexInfo,
    Interaction,
    Item,
    ScoredItem,
    UserProfile,
)


class Embedder(Protocol):
    async def embed(self, images: Sequence[bytes], *, model_version: str) -> np.ndarray:
        """(len(images), dim) L2-normalised float32 embeddings computed by ``model_version``.

        Raises InvalidArgument for an image the model cannot decode, BackendUnavailable /
        BackendTimeout when the inference server is down or slow, and FailedPrecondition when it
        does not serve ``model_version``.
        """
        ...

    async def ready(self) -> bool:
        """The embedding model answers its readiness check (never raises)."""
        ...

    async def image_limits(self, model_version: str) -> Mapping[str, str] | None:
        """The image limits in ``model_version``'s config parameters (max_pixels,
        max_aspect_ratio, min_side); None when they cannot be read now (never raises)."""
        ...

    async def served_version(self) -> str | None:
        """The model version requests are served by now (None: no version is ready)."""
        ...

    async def close(self) -> None: ...


class CatalogReads(Protocol):
    """What serving reads from the vector database."""

    async def active_index(self) -> IndexInfo | None:
        """The index the active pointer names, or None before any catalog was ingested."""
        ...

    async def get_vectors(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, np.ndarray]:
        """Stored vectors of the ids that exist (missing ids are simply absent)."""
        ...

    async def search(
        self, index: IndexInfo, vector: np.ndarray, k: int, conditions: Sequence[Condition],
        *, with_vectors: bool = False,
    ) -> list[ScoredItem]:
        """Up to k nearest items by cosine similarity, best first, all satisfying conditions."""
        ...

    async def search_many(
        self, index: IndexInfo, vectors: Sequence[np.ndarray], k: int,
        conditions: Sequence[Condition], *, with_vectors: bool = False,
    ) -> list[list[ScoredItem]]:
        """``search`` for several query vectors in one round trip."""
        ...

    async def neighbours(self, index: IndexInfo, item_id: str, k: int,
                         conditions: Sequence[Condition]) -> list[ScoredItem] | None:
        """``search`` by the stored vector of ``item_id`` (the item itself may be among the
        hits); None when the index does not hold it. One call of the adapter: the lookup and
        the search do not pay two hand-offs to the client library's thread."""
        ...

    async def get_items(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, Item]: ...

    async def sample_items(
        self, index: IndexInfo, conditions: Sequence[Condition], limit: int
    ) -> list[Item]:
        """Up to ``limit`` items satisfying conditions, in storage order (no vector query)."""
        ...

    async def building_indexes(self) -> list[IndexInfo]:
        """Indexes a rollout is filling now (online changes must reach them too)."""
        ...


class UserState(Protocol):
    """Profiles (stored beside an index: same model version, same embedding space) and the
    interaction log, the source of truth of every count (model-version independent)."""

    async def get_profile(self, index: IndexInfo, user_id: str, *,
                          for_update: bool = True) -> UserProfile | None: ...

    async def get_profiles(self, index: IndexInfo, user_ids: Sequence[str]
                           ) -> Mapping[str, UserProfile]: ...

    async def put_profile(self, index: IndexInfo, profile: UserProfile) -> None:
        """Durable once it returns."""
        ...

    async def log_interaction(self, event: Interaction) -> None:
        """Idempotent by event id: a retry adds no row."""
        ...

    async def event_logged(self, event_id: str) -> bool: ...

    async def recent_items(self, user_ids: Sequence[str], limit: int
                           ) -> Mapping[str, tuple[str, ...]]:
        """Each user's most recent distinct items (most recent first), from the log."""
        ...

    async def popularity(self, ids: Sequence[str]) -> Mapping[str, float]:
        """Weighted interaction counts, from the log."""
        ...

    async def most_popular(self, limit: int) -> list[tuple[str, float]]: ...


class VectorStore(CatalogReads, UserState, Protocol):
    """Everything the gateway's core reads and writes."""

    async def close(self) -> None: ...


class CatalogEditor(Protocol):
    """The gateway's online catalog changes to one index (UpsertItems, DeleteItems)."""

    def id_problem(self, item_id: str) -> str | None:
        """Why the database cannot hold (and delete) an item with this id, or None."""
        ...

    async def put_items(self, collection: str, items: Sequence[tuple[Item, np.ndarray]],
                        fingerprint: str | Sequence[str] = "") -> None:
        """Replace or add the items; ``fingerprint`` one for all, or one per item."""
        ...

    async def remove_items(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Delete the items; the ids that were there."""
        ...


class ChangeLog(Protocol):
    """The online changes, durable: what ingest and rollouts apply when they rebuild."""

    async def prepare(self) -> None:
        """Create what the log needs (ingest calls it; the gateway creates it when missing)."""
        ...

    async def record(self, changes: Sequence[CatalogChange],
                     images: Mapping[str, bytes] | None = None) -> None: ...

    async def since(self, at: float) -> list[CatalogChange]: ...

    async def image(self, item_id: str) -> bytes | None: ...
