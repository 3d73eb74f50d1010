"""The gateway's core: validates a request, calls the embedder and the vector store through their
narrow interfaces, and returns domain results. No gRPC, no protobuf, no client libraries."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from gateway import filters
from gateway.active_index import ActiveIndex
from gateway.domain import Condition, Recommendations
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound
from gateway.images import check_image
from gateway.ports import Embedder, VectorStore

StageObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class Limits:
    max_k: int = 1000
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_id_length: int = 256


def check_id(kind: str, value: str, max_length: int) -> str:
    if not value:
        raise InvalidArgument(f"{kind} is empty")
    if len(value) > max_length:
        raise InvalidArgument(f"{kind} is {len(value)} characters long; the limit is {max_length}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidArgument(f"{kind} contains control characters")
    return value


class RecommenderCore:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        index: ActiveIndex,
        limits: Limits = Limits(),
        observe_stage: StageObserver | None = None,
    ) -> None:
        self._embedder = embedder
        self._store = store
        self._index = index
        self._limits = limits
        self._observe = observe_stage or (lambda stage, seconds: None)

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._observe(name, time.perf_counter() - start)

    def _check_k(self, k: int) -> int:
        if not 1 <= k <= self._limits.max_k:
            raise InvalidArgument(f"k must be between 1 and {self._limits.max_k}, got {k}")
        return k

    async def similar_items(
        self, item_id: str, k: int, conditions: Sequence[Condition] = ()
    ) -> Recommendations:
        """Nearest neighbours of a catalog item by its stored vector; the item itself excluded."""
        self._check_k(k)
        check_id("item_id", item_id, self._limits.max_id_length)
        index = await self._index.current()
        conds = filters.validate(conditions, index)
        with self._stage("lookup"):
            vectors = await self._store.get_vectors(index, [item_id])
        if item_id not in vectors:
            raise NotFound(f"item {item_id!r} is not in the catalog")
        with self._stage("ann"):
            hits = await self._store.search(index, vectors[item_id], k + 1, conds)
        items = [h for h in hits if h.item.id != item_id][:k]
        return Recommendations(items=items, model_version=index.model_version, policy="similarity")

    async def search_by_image(
        self, image: bytes, k: int, conditions: Sequence[Condition] = ()
    ) -> Recommendations:
        """Embed an uploaded image with the model version of the active index, then ANN."""
        self._check_k(k)
        with self._stage("decode"):
            check_image(image, max_bytes=self._limits.max_image_bytes,
                        max_pixels=self._limits.max_image_pixels)
        index = await self._index.current()
        conds = filters.validate(conditions, index)
        with self._stage("embed"):
            embedding = await self._embedder.embed([image], model_version=index.model_version)
        if embedding.shape != (1, index.dim):
            raise FailedPrecondition(
                f"the image model returned shape {embedding.shape}, the index "
                f"{index.collection} holds {index.dim}-d vectors"
            )
        with self._stage("ann"):
            items = await self._store.search(index, embedding[0], k, conds)
        return Recommendations(items=items, model_version=index.model_version, policy="similarity")
