"""In-memory fakes of the embedder and vector store, for unit tests of the core only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gateway.domain import Condition, IndexInfo, Interaction, Item, ScoredItem
from gateway.errors import BackendUnavailable, FailedPrecondition
from gateway.filters import matches
from gateway.profiles import UserProfile


class FakeEmbedder:
    def __init__(self, dim: int = 4, version: str = "1") -> None:
        self.dim, self.version, self.calls = dim, version, 0

    async def embed(self, images: Sequence[bytes], *, model_version: str) -> np.ndarray:
        self.calls += 1
        if model_version != self.version:
            raise FailedPrecondition(f"serves {self.version}, asked {model_version}")
        rng = np.random.default_rng(len(images[0]))
        v = rng.normal(size=(len(images), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    async def ready(self) -> bool:
        return True

    async def served_version(self) -> str | None:
        return self.version

    async def close(self) -> None:
        pass


class InMemoryStore:
    def __init__(self, items: Mapping[str, tuple[Item, np.ndarray]], index: IndexInfo | None):
        self.items = dict(items)
        self.index = index
        self.profiles: dict[str, UserProfile] = {}
        self.events: dict[str, Interaction] = {}
        self.pop: dict[str, float] = {}
        self.down = False  # simulate Milvus being away

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("fake Milvus is down")

    async def active_index(self) -> IndexInfo | None:
        self._check()
        return self.index

    async def get_vectors(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, np.ndarray]:
        self._check()
        return {i: self.items[i][1] for i in ids if i in self.items}

    async def get_items(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, Item]:
        return {i: self.items[i][0] for i in ids if i in self.items}

    async def search(self, index: IndexInfo, vector: np.ndarray, k: int,
                     conditions: Sequence[Condition], *,
                     with_vectors: bool = False) -> list[ScoredItem]:
        self._check()
        hits = [
            ScoredItem(item, float(np.dot(v, vector) / np.linalg.norm(v) / np.linalg.norm(vector)),
                       v if with_vectors else None)
            for item, v in self.items.values()
            if all(matches(item.value(c.field), c) for c in conditions)
        ]
        return sorted(hits, key=lambda h: (-h.score, h.item.id))[:k]

    async def search_many(self, index: IndexInfo, vectors: Sequence[np.ndarray], k: int,
                          conditions: Sequence[Condition], *,
                          with_vectors: bool = False) -> list[list[ScoredItem]]:
        return [await self.search(index, v, k, conditions, with_vectors=with_vectors)
                for v in vectors]

    async def sample_items(self, index: IndexInfo, conditions: Sequence[Condition],
                           limit: int) -> list[Item]:
        self._check()
        return [it for it, _ in self.items.values()
                if all(matches(it.value(c.field), c) for c in conditions)][:limit]

    async def get_profile(self, index: IndexInfo, user_id: str, *,
                          for_update: bool = True) -> UserProfile | None:
        self._check()
        return self.profiles.get(user_id)

    async def put_profile(self, index: IndexInfo, profile: UserProfile) -> None:
        self._check()
        self.profiles[profile.user_id] = profile

    async def log_interaction(self, event: Interaction) -> None:
        self._check()
        self.events[event.event_id] = event

    async def add_popularity(self, item_id: str, weight: float) -> None:
        self.pop[item_id] = self.pop.get(item_id, 0.0) + weight

    async def popularity(self, ids: Sequence[str]) -> Mapping[str, float]:
        return {i: self.pop[i] for i in ids if i in self.pop}

    async def most_popular(self, limit: int) -> list[tuple[str, float]]:
        return sorted(self.pop.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    async def close(self) -> None:
        pass
