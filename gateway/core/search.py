"""SimilarItems and SearchByImage: neighbours of a stored item, or of an uploaded image."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from visrec.gateway.core import filters
from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.checks import Limits, check_id
from visrec.gateway.core.fallback import Fallback
from visrec.gateway.core.images import ImageLimits, check_image
from visrec.gateway.core.observer import Stages
from visrec.platform.deadlines import budget
from visrec.platform.domain import Condition, IndexInfo, Recommendations
from visrec.platform.errors import (
    BackendTimeout,
    BackendUnavailable,
    FailedPrecondition,
    NotFound,
)
from visrec.platform.ports import CatalogReads, Embedder

log = logging.getLogger(__name__)


class CatalogSearch:
    def __init__(self, embedder: Embedder, store: CatalogReads, index: ActiveIndex,
                 limits: Limits, fallback: Fallback, stages: Stages) -> None:
        self._embedder = embedder
        self._store = store
        self._index = index
        self._limits = limits
        self._fallback = fallback
        self._stage = stages

    def _degraded(self, index: IndexInfo, k: int, conds: Sequence[Condition],
                  exclude: frozenset[str], error: Exception) -> Recommendations:
        log.warning("vector store unavailable, serving the fallback list: %s", error)
        return Recommendations(items=self._fallback.from_cache(index, k, conds, exclude),
                               model_version=index.model_version, policy="popularity",
                               degraded="vector_store_unavailable")

    async def similar_items(
        self, item_id: str, k: int, conditions: Sequence[Condition] = ()
    ) -> Recommendations:
        """Nearest neighbours of a catalog item by its stored vector; the item itself excluded."""
        self._limits.check_k(k)
        check_id("item_id", item_id, self._limits.max_id_length)
        index = await self._index.current()
        conds = filters.validate(conditions, index)
        try:
            with budget(self._limits.store_budget_s), self._stage("neighbours"):
                hits = await self._store.neighbours(index, item_id, k + 1, conds)
        except (BackendUnavailable, BackendTimeout) as e:
            return self._degraded(index, k, conds, frozenset({item_id}), e)
        if hits is None:
            raise NotFound(f"item {item_id!r} is not in the catalog")
        items = [h for h in hits if h.item.id != item_id][:k]
        return Recommendations(items=items, model_version=index.model_version, policy="similarity")

    async def search_by_image(
        self, image: bytes, k: int, conditions: Sequence[Condition] = ()
    ) -> Recommendations:
        """Embed an uploaded image with the model version of the active index, then ANN."""
        self._limits.check_k(k)
        index = await self._index.current()
        with self._stage("model_config"):  # read once per version, then cached
            params = await self._embedder.image_limits(index.model_version)
        with self._stage("decode"):
            limits = (ImageLimits.from_parameters(params, self._limits.max_image_pixels)
                      if params is not None else
                      ImageLimits(max_pixels=self._limits.max_image_pixels))
            check_image(image, max_bytes=self._limits.max_image_bytes, limits=limits)
        conds = filters.validate(conditions, index)
        with self._stage("embed"):
            embedding = await self._embedder.embed([image], model_version=index.model_version)
        if embedding.shape != (1, index.dim):
            raise FailedPrecondition(
                f"the image model returned shape {embedding.shape}, the index "
                f"{index.collection} holds {index.dim}-d vectors"
            )
        try:
            with budget(self._limits.store_budget_s):
                with self._stage("ann"):
                    items = await self._store.search(index, embedding[0], k, conds)
        except (BackendUnavailable, BackendTimeout) as e:
            return self._degraded(index, k, conds, frozenset(), e)
        return Recommendations(items=items, model_version=index.model_version, policy="similarity")
