"""The defined answer when personalised or vector answers cannot be had: the cached popular list
(also while Milvus is away), then a category-diverse sample of the filtered catalog."""

from __future__ import annotations

from collections.abc import Sequence

from visrec.gateway.core import filters
from visrec.gateway.core.observer import Stages
from visrec.gateway.core.popular import PopularItems, round_robin_by_category
from visrec.platform.domain import Condition, IndexInfo, ScoredItem
from visrec.platform.ports import CatalogReads


class Fallback:
    def __init__(self, store: CatalogReads, popular: PopularItems, stages: Stages) -> None:
        self._store = store
        self._popular = popular
        self._stage = stages

    def from_cache(self, index: IndexInfo, k: int, conds: Sequence[Condition],
                   exclude: frozenset[str]) -> list[ScoredItem]:
        """The cached list only: no vector-store call (Milvus may be away)."""
        return [
            ScoredItem(it, score) for it, score in self._popular.pool(index.collection)
            if it.id not in exclude and all(filters.matches(it.value(c.field), c) for c in conds)
        ][:k]

    async def fetch(self, index: IndexInfo, k: int, conds: Sequence[Condition],
                    exclude: frozenset[str]) -> list[ScoredItem]:
        """Popular items, then a category-diverse sample, that satisfy the filter."""
        with self._stage("fallback"):
            await self._popular.ensure(index)
            out = self.from_cache(index, k, conds, exclude)
            if len(out) < k and conds:  # the cached list holds few items of this slice
                taken = exclude | {s.item.id for s in out}
                sample = await self._store.sample_items(index, conds, (k + len(taken)) * 4)
                out += [ScoredItem(it, 0.0) for it in round_robin_by_category(sample)
                        if it.id not in taken][: k - len(out)]
        return out
