"""The gateway's core: validates a request, calls the embedder and the vector store through their
narrow interfaces, and returns domain results. No gRPC, no protobuf, no client libraries."""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gateway import filters
from gateway.active_index import ActiveIndex
from gateway.domain import (
    Condition,
    IndexInfo,
    Interaction,
    InteractionResult,
    Recommendations,
    ScoredItem,
)
from gateway.errors import (
    BackendTimeout,
    BackendUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from gateway.experiments import Arm, Experiment, parse_experiment
from gateway.images import check_image
from gateway.popular import PopularItems
from gateway.ports import Embedder, VectorStore
from gateway.profiles import DEFAULT_WEIGHTS, apply_interaction, event_key, parse_weights
from gateway.ranking import Candidate, RankContext

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Where the core reports what it did (the gateway's Prometheus metrics)."""

    def stage(self, name: str, seconds: float) -> None: ...

    def served(self, experiment: str, arm: str, policy: str, items: int,
               degraded: str) -> None: ...

    def interaction(self, experiment: str, arm: str, policy: str, kind: str,
                    counted: bool) -> None: ...


class NullObserver:
    def stage(self, name: str, seconds: float) -> None:
        pass

    def served(self, experiment: str, arm: str, policy: str, items: int,
               degraded: str) -> None:
        pass

    def interaction(self, experiment: str, arm: str, policy: str, kind: str,
                    counted: bool) -> None:
        pass


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]


@dataclass(frozen=True)
class Limits:
    max_k: int = 1000
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_id_length: int = 256
    # The whole vector-store part of one read (several Milvus calls) within this many seconds,
    # else the degraded answer: a slow Milvus must not hold a caller past its deadline.
    store_budget_s: float = 5.0


@dataclass(frozen=True)
class Personalisation:
    experiment: Experiment = field(default_factory=lambda: parse_experiment("", ""))
    weights: Mapping[str, float] = field(default_factory=lambda: parse_weights(DEFAULT_WEIGHTS))
    profile_rate: float = 0.3
    recent_items: int = 50
    overfetch: int = 5
    max_candidates: int = 1000
    recent_queries: int = 10  # most recent items that query the index
    allow_arm_override: bool = False


def check_id(kind: str, value: str, max_length: int) -> str:
    if not value:
        raise InvalidArgument(f"{kind} is empty")
    if len(value) > max_length:
        raise InvalidArgument(f"{kind} is {len(value)} characters long; the limit is {max_length}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidArgument(f"{kind} contains control characters")
    return value


async def multi_interest(store: VectorStore, index: IndexInfo, recent: Sequence[str], fetch: int,
                         conds: Sequence[Condition] = (), *,
                         fallback_query: np.ndarray | None = None, with_vectors: bool = False,
                         stage: Callable[[str], AbstractContextManager[None]] = (
                             lambda name: nullcontext())) -> list[ScoredItem]:
    """Recommend's retrieval: each recent item's stored vector queries the index (``fetch``
    neighbours) and a candidate scores its best cosine over them. ``fallback_query`` (the
    profile's moving average) is the query only when none of the recent items is in the index.
    Hits are in no particular order; the recent items themselves may be among them."""
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


class RecommenderCore:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        index: ActiveIndex,
        limits: Limits = Limits(),
        observer: Observer | None = None,
        personalisation: Personalisation | None = None,
        popular: PopularItems | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._embedder = embedder
        self._store = store
        self._index = index
        self._limits = limits
        self._observer = observer or NullObserver()
        self._p = personalisation or Personalisation()
        self._popular = popular or PopularItems(store, index)
        self._clock = clock
        self._user_locks = KeyedLocks()

    @property
    def experiment(self) -> Experiment:
        return self._p.experiment

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._observer.stage(name, time.perf_counter() - start)

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
        try:
            async with self._budget():
                with self._stage("lookup"):
                    vectors = await self._store.get_vectors(index, [item_id])
                if item_id not in vectors:
                    raise NotFound(f"item {item_id!r} is not in the catalog")
                with self._stage("ann"):
                    hits = await self._store.search(index, vectors[item_id], k + 1, conds)
        except (BackendUnavailable, BackendTimeout) as e:
            log.warning("vector store unavailable, serving the fallback list: %s", e)
            return Recommendations(
                items=self._fallback_from_cache(index, k, conds, frozenset({item_id})),
                model_version=index.model_version, policy="popularity",
                degraded="vector_store_unavailable")
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
        try:
            async with self._budget():
                with self._stage("ann"):
                    items = await self._store.search(index, embedding[0], k, conds)
        except (BackendUnavailable, BackendTimeout) as e:
            log.warning("vector store unavailable, serving the fallback list: %s", e)
            return Recommendations(items=self._fallback_from_cache(index, k, conds, frozenset()),
                                   model_version=index.model_version, policy="popularity",
                                   degraded="vector_store_unavailable")
        return Recommendations(items=items, model_version=index.model_version, policy="similarity")

    # ------------------------------------------------------------------ personalisation
    def arm_for(self, user_id: str, override: str | None = None) -> Arm:
        """The user's arm; a QA override is honoured only when configuration enables it."""
        if override and self._p.allow_arm_override:
            arm = self._p.experiment.arm(override)
            if arm is None:
                names = ", ".join(a.name for a in self._p.experiment.arms)
                raise InvalidArgument(f"unknown arm {override!r} in x-visrec-arm; arms: {names}")
            return arm
        return self._p.experiment.assign(user_id)

    async def recommend(self, user_id: str, k: int, conditions: Sequence[Condition] = (),
                        exclude_seen: bool = False,
                        arm_override: str | None = None) -> Recommendations:
        """Profile vector -> over-fetched candidates -> the policy of the user's arm -> k items.
        Cold users, and users whose candidates the filter removes, get the fallback list."""
        self._check_k(k)
        check_id("user_id", user_id, self._limits.max_id_length)
        arm = self.arm_for(user_id, arm_override)
        index = await self._index.current()
        conds = filters.validate(conditions, index)
        result = await self._recommend(index, user_id, k, conds, exclude_seen, arm)
        self._observer.served(self._p.experiment.name, arm.name, arm.policy.name,
                              len(result.items), result.degraded)
        return result

    async def _recommend(self, index: IndexInfo, user_id: str, k: int,
                         conds: Sequence[Condition], exclude_seen: bool,
                         arm: Arm) -> Recommendations:
        def answer(items: list[ScoredItem], degraded: str = "") -> Recommendations:
            return Recommendations(items=items, model_version=index.model_version,
                                   experiment=self._p.experiment.name, arm=arm.name,
                                   policy=arm.policy.name, degraded=degraded)

        try:
            async with self._budget():
                return await self._personalised(index, user_id, k, conds, exclude_seen, arm,
                                                answer)
        except (BackendUnavailable, BackendTimeout) as e:
            log.warning("vector store unavailable, serving the fallback list: %s", e)
            return answer(self._fallback_from_cache(index, k, conds, frozenset()),
                          "vector_store_unavailable")

    async def _personalised(self, index: IndexInfo, user_id: str, k: int,
                            conds: Sequence[Condition], exclude_seen: bool, arm: Arm,
                            answer: Callable[..., Recommendations]) -> Recommendations:
        with self._stage("profile"):
            profile = await self._store.get_profile(index, user_id, for_update=False)
        seen = profile.seen if profile is not None else frozenset()
        exclude = seen if exclude_seen else frozenset()
        if profile is None or profile.vector is None:
            return answer(await self._fallback(index, k, conds, exclude), "cold_user")

        policy = arm.policy
        fetch = min(max(k * self._p.overfetch, 50) + len(exclude), self._p.max_candidates)
        # Multi-interest retrieval: each of the user's most recent items queries the index and
        # a candidate scores its best cosine over them. The moving-average profile vector is
        # the query only when no recent item is left in the index: an average of vectors drifts
        # towards what all items share (on the demo catalog, single-taste users, precision@10
        # with seen items excluded: 0.31 for the average, 0.44 for the best-of-recent).
        hits = await multi_interest(
            self._store, index, profile.recent_items[: self._p.recent_queries], fetch, conds,
            fallback_query=profile.vector, with_vectors=policy.needs_vectors,
            stage=self._stage)
        popularity: Mapping[str, float] = {}
        if policy.needs_popularity and hits:
            with self._stage("popularity"):
                popularity = await self._store.popularity([h.item.id for h in hits])
        with self._stage("rank"):
            candidates = [Candidate(h.item, h.score, h.score, h.vector) for h in hits
                          if h.item.id not in exclude]
            ranked = policy.rank(candidates, RankContext(k, seen, popularity, self._clock()))
        items = [ScoredItem(c.item, c.score) for c in ranked]
        if len(items) >= k:
            return answer(items)
        taken = exclude | {it.item.id for it in items}
        fill = await self._fallback(index, k - len(items), conds, taken)
        return answer(items + fill, "few_candidates")

    @asynccontextmanager
    async def _budget(self) -> AsyncIterator[None]:
        """BackendTimeout once the vector-store part of a call has used its budget."""
        try:
            async with asyncio.timeout(self._limits.store_budget_s):
                yield
        except TimeoutError as e:
            raise BackendTimeout(f"the vector store did not answer within "
                                 f"{self._limits.store_budget_s:.1f}s") from e

    def _fallback_from_cache(self, index: IndexInfo, k: int, conds: Sequence[Condition],
                             exclude: frozenset[str]) -> list[ScoredItem]:
        return [
            ScoredItem(it, score) for it, score in self._popular.pool(index.collection)
            if it.id not in exclude and all(filters.matches(it.value(c.field), c) for c in conds)
        ][:k]

    async def _fallback(self, index: IndexInfo, k: int, conds: Sequence[Condition],
                        exclude: frozenset[str]) -> list[ScoredItem]:
        """Popular items, then a category-diverse sample, that satisfy the filter."""
        with self._stage("fallback"):
            await self._popular.ensure(index)
            out = self._fallback_from_cache(index, k, conds, exclude)
            if len(out) < k and conds:  # the cached list holds few items of this slice
                from gateway.popular import round_robin_by_category

                taken = exclude | {s.item.id for s in out}
                sample = await self._store.sample_items(index, conds, (k + len(taken)) * 4)
                out += [ScoredItem(it, 0.0) for it in round_robin_by_category(sample)
                        if it.id not in taken][: k - len(out)]
        return out

    async def record_interaction(self, user_id: str, item_id: str, kind: str,
                                 request_id: str = "",
                                 arm_override: str | None = None) -> InteractionResult:
        """Move the user's profile towards the item (durably), log the event, count it for the
        arm. A retry with the same request id, item and type is acknowledged, not counted."""
        check_id("user_id", user_id, self._limits.max_id_length)
        check_id("item_id", item_id, self._limits.max_id_length)
        if kind not in self._p.weights:
            raise InvalidArgument(
                f"interaction type must be one of {', '.join(self._p.weights)}, got {kind!r}")
        if request_id:
            check_id("request_id", request_id, 128)
        arm = self.arm_for(user_id, arm_override)
        weight = self._p.weights[kind]
        index = await self._index.current()
        with self._stage("lookup"):
            vectors = await self._store.get_vectors(index, [item_id])
        if item_id not in vectors:
            raise NotFound(f"item {item_id!r} is not in the catalog")
        key = event_key(user_id, request_id, item_id, kind)
        now = self._clock()
        with self._stage("profile"):
            async with self._user_locks.hold(user_id):
                profile = await self._store.get_profile(index, user_id)
                counted = key is None or profile is None or key not in profile.recent_events
                if counted:
                    updated = apply_interaction(
                        profile, user_id, item_id, vectors[item_id], kind, weight,
                        rate=self._p.profile_rate, now=now, key=key,
                        recent_items=self._p.recent_items)
                    await self._store.put_profile(index, updated)
        event = Interaction(
            event_id=key or uuid.uuid4().hex, user_id=user_id, item_id=item_id, kind=kind,
            weight=weight, at=now, experiment=self._p.experiment.name, arm=arm.name,
            policy=arm.policy.name, request_id=request_id, model_version=index.model_version)
        await self._store.log_interaction(event)  # idempotent: a retry rewrites the same row
        if counted:
            try:
                await self._store.add_popularity(item_id, weight)
            except (BackendUnavailable, BackendTimeout) as e:  # approximate by design
                log.warning("popularity of %s not updated: %s", item_id, e)
        self._observer.interaction(self._p.experiment.name, arm.name, arm.policy.name, kind,
                                   counted)
        return InteractionResult(self._p.experiment.name, arm.name, counted)
