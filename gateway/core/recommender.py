"""The gateway's core: one object per use case, composed here and called directly by the servicer
(``core.search.similar_items``, ``core.personaliser.recommend``...): no layer forwards calls. Each
validates its request, calls the embedder and the vector store through their narrow interfaces
(``visrec.platform.ports``) and returns domain results. No gRPC, no protobuf, no client
libraries."""

from __future__ import annotations

import time
from collections.abc import Callable

from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.catalog_updates import CatalogUpdates
from visrec.gateway.core.checks import Limits
from visrec.gateway.core.fallback import Fallback
from visrec.gateway.core.interactions import InteractionRecorder
from visrec.gateway.core.observer import NullObserver, Observer, Stages
from visrec.gateway.core.personalised import Personalisation, Personaliser
from visrec.gateway.core.popular import PopularItems
from visrec.gateway.core.search import CatalogSearch
from visrec.platform.errors import FailedPrecondition
from visrec.platform.ports import CatalogEditor, ChangeLog, Embedder, VectorStore

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
        self.search = CatalogSearch(embedder, store, index, limits, fallback, stages)
        self.personaliser = Personaliser(store, index, limits, self._p, fallback, stages,
                                         observer, clock)
        self.interactions = InteractionRecorder(store, index, limits, self._p, stages, observer,
                                                clock)
        self._catalog = (CatalogUpdates(embedder, store, editor, changes, index, limits,
                                        popular, stages, observer, clock)
                         if editor is not None and changes is not None else None)

    @property
    def catalog(self) -> CatalogUpdates:
        """UpsertItems and DeleteItems (a gateway started without a catalog writer has none)."""
        if self._catalog is None:
            raise FailedPrecondition("this gateway was started without a catalog writer")
        return self._catalog
