"""Recommend's retrieval, shared with offline evaluation so both ask the index the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from visrec.platform.domain import Condition, IndexInfo, ScoredItem
from visrec.platform.ports import CatalogReads


async def multi_interest(store: CatalogReads, index: IndexInfo, recent: Sequence[str], fetch: int,
                         conds: Sequence[Condition] = (), *,
                         fallback_query: np.ndarray | None = None, with_vectors: bool = False,
                         stage: Callable[[str], AbstractContextManager[None]] = (
                             lambda name: nullcontext())) -> list[ScoredItem]:
    """Each recent item's stored vector queries the index (``fetch`` neighbours) and a candidate
    scores its best cosine over them. ``fallback_query`` (the profile's moving average) is the
    query only when none of the recent items is in the index. Hits are in no particular order;
    the recent items themselves may be among them."""
    with stage("profile"):
        vectors = await store.get_vectors(index, list(recent)) if recent else {}
    queries = [vectors[i] for i in recent if i in vectors]
    if not queries and fallback_query is not None:
        queries = [fallback_query]
    if not queries:
        return []
    with stage("ann"):
        results = await store.search_many(index, queries, fetch, conds, with_vectors=with_vectors)
    best: dict[str, ScoredItem] = {}
    for hit_list in results:
        for h in hit_list:
            if h.item.id not in best or h.score > best[h.item.id].score:
                best[h.item.id] = h
    return list(best.values())
