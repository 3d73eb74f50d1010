"""In-memory fakes of the embedder and vector store, for unit tests of the core only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gateway.domain import Condition, IndexInfo, Item, ScoredItem
from gateway.errors import FailedPrecondition
from gateway.filters import matches


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

    async def close(self) -> None:
        pass


class InMemoryStore:
    def __init__(self, items: Mapping[str, tuple[Item, np.ndarray]], index: IndexInfo | None):
        self.items = dict(items)
        self.index = index

    async def active_index(self) -> IndexInfo | None:
        return self.index

    async def get_vectors(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, np.ndarray]:
        return {i: self.items[i][1] for i in ids if i in self.items}

    async def get_items(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, Item]:
        return {i: self.items[i][0] for i in ids if i in self.items}

    async def search(self, index: IndexInfo, vector: np.ndarray, k: int,
                     conditions: Sequence[Condition]) -> list[ScoredItem]:
        hits = [
            ScoredItem(item, float(np.dot(v, vector) / np.linalg.norm(v) / np.linalg.norm(vector)))
            for item, v in self.items.values()
            if all(matches(item.value(c.field), c) for c in conditions)
        ]
        return sorted(hits, key=lambda h: -h.score)[:k]

    async def close(self) -> None:
        pass
