"""The gateway's core: one object per use case, composed here. It validates requests, calls the
embedder and the vector store through their narrow interfaces (``ports``) and returns domain
results. No gRPC, no protobuf, no client libraries."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.catalog_updates import CatalogUpdates
from visrec.gateway.core.checks import Limits
from visrec.gateway.core.domain import (
    Condition,
    InteractionResult,
    ItemUpsert,
    Recommendations,
    UpsertResult,
)
from visrec.gateway.core.errors import FailedPrecondition
from visrec.gateway.core.experiments import Arm, Experiment
from visrec.gateway.core.fallback import Fallback
from visrec.gateway.core.interactions import InteractionRecorder
from visrec.gateway.core.observer import NullObserver, Observer, Stages
from visrec.gateway.core.personalised import Personalisation, Personaliser
from visrec.gateway.core.popular import PopularItems
from visrec.gateway.core.ports import CatalogEditor, ChangeLog, Embedder, VectorStore
from visrec.gateway.core.search import CatalogSearch

__all__ = ["Limits", "Personalisation", "RecommenderCore"]


class RecommenderCore:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        index: ActiveIndex,
        limits: Limits | None = None,
        observer: Observer | None = None,
        personalisation: Personalisation | None = None,
        popular: PopularItems | None = None,
        clock: Callable[[], float] = time.time,
        editor: CatalogEditor | None = None,
        changes: ChangeLog | None = None,
    ) -> None:
        limits = limits or Limits()
        self.limits = limits
        observer = observer or NullObserver()
        stages = Stages(observer)
        self._index = index
        self._p = personalisation or Personalisation()
        popular = popular or PopularItems(store, index)
        fallback = Fallback(store, popular, stages)
        self._search = CatalogSearch(embedder, store, index, limits, fallback, stages)
        self._personaliser = Personaliser(store, index, limits, self._p, fallback, stages,
                                          observer, clock)
        self._interactions = InteractionRecorder(store, index, limits, self._p, stages,
                                                 observer, clock)
        self._catalog = (CatalogUpdates(embedder, store, editor, changes, index, limits,
                                        popular, stages, observer, clock)
                         if editor is not None and changes is not None else None)

    @property
    def experiment(self) -> Experiment:
        return self._p.experiment

    def arm_for(self, user_id: str, override: str | None = None) -> Arm:
        return self._p.arm_for(user_id, override)

    async def similar_items(self, item_id: str, k: int,
                            conditions: Sequence[Condition] = ()) -> Recommendations:
        return await self._search.similar_items(item_id, k, conditions)

    async def search_by_image(self, image: bytes, k: int,
                              conditions: Sequence[Condition] = ()) -> Recommendations:
        return await self._search.search_by_image(image, k, conditions)

    async def recommend(self, user_id: str, k: int, conditions: Sequence[Condition] = (),
                        exclude_seen: bool = False,
                        arm_override: str | None = None) -> Recommendations:
        return await self._personaliser.recommend(user_id, k, conditions, exclude_seen,
                                                  arm_override)

    async def record_interaction(self, user_id: str, item_id: str, kind: str,
                                 request_id: str = "",
                                 arm_override: str | None = None) -> InteractionResult:
        return await self._interactions.record(user_id, item_id, kind, request_id,
                                               arm_override)

    def _updates(self) -> CatalogUpdates:
        if self._catalog is None:
            raise FailedPrecondition("this gateway was started without a catalog writer")
        return self._catalog

    async def upsert_items(self, items: Sequence[ItemUpsert]) -> UpsertResult:
        return await self._updates().upsert(items)

    async def delete_items(self, ids: Sequence[str]) -> int:
        return await self._updates().delete(ids)
