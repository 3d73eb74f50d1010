"""The two narrow seams to external systems. Unit tests pass in-memory fakes; integration tests
the real adapters (TritonEmbedder, MilvusVectorStore)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from gateway.domain import Condition, IndexInfo, Interaction, Item, ScoredItem
from gateway.profiles import UserProfile


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

    async def served_version(self) -> str | None:
        """The model version requests are served by now (None: no version is ready)."""
        ...

    async def close(self) -> None: ...


class VectorStore(Protocol):
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

    async def get_items(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, Item]: ...

    async def sample_items(
        self, index: IndexInfo, conditions: Sequence[Condition], limit: int
    ) -> list[Item]:
        """Up to ``limit`` items satisfying conditions, in storage order (no vector query)."""
        ...

    # user profiles (stored beside the index: same model version, same embedding space)
    async def get_profile(self, index: IndexInfo, user_id: str, *,
                          for_update: bool = True) -> UserProfile | None: ...

    async def put_profile(self, index: IndexInfo, profile: UserProfile) -> None:
        """Durable once it returns."""
        ...

    # the interaction log and per-item popularity (model-version independent)
    async def log_interaction(self, event: Interaction) -> None:
        """Idempotent by event id."""
        ...

    async def add_popularity(self, item_id: str, weight: float) -> None: ...

    async def popularity(self, ids: Sequence[str]) -> Mapping[str, float]: ...

    async def most_popular(self, limit: int) -> list[tuple[str, float]]: ...

    async def close(self) -> None: ...
