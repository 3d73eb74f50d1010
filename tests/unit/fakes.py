"""In-memory fakes of the ports (visrec.platform.ports), for unit tests of pure logic: the
core, ingest and the rollout. Integration tests use the real Triton and Milvus instead."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from visrec.gateway.core.filters import matches
from visrec.platform.domain import (
    CatalogChange,
    Condition,
    IndexInfo,
    Interaction,
    Item,
    ScoredItem,
    UserProfile,
)
from visrec.platform.errors import BackendUnavailable, InvalidArgument, VersionNotServed
from visrec.platform.milvus.schema import item_from_row, item_row, users_collection


class FakeEmbedder:
    """Deterministic vectors from the image bytes; serves the given model versions only and
    records which version each call asked for. Bytes starting with b"bad" are undecodable."""

    def __init__(self, dim: int = 4, version: str = "1",
                 versions: Mapping[str, int] | None = None) -> None:
        self.dim, self.version = dim, version
        self.dims = dict(versions) if versions is not None else {version: dim}
        self.calls = 0
        self.asked: list[str] = []
        self.limits: Mapping[str, str] | None = None  # what image_embedding's config says

    async def embed(self, images: Sequence[bytes], *, model_version: str) -> np.ndarray:
        self.calls += 1
        self.asked.append(model_version)
        if model_version not in self.dims:  # as TritonEmbedder: not served now, retryable
            raise VersionNotServed(f"serves {sorted(self.dims)}, asked {model_version}")
        if any(image.startswith(b"bad") for image in images):
            raise InvalidArgument("image rejected: cannot decode image")
        out = []
        for image in images:
            seed = int.from_bytes(image[:8].ljust(8, b"\0"), "little") + len(image)
            seed += 1000 * int(model_version)
            out.append(np.random.default_rng(seed).normal(size=self.dims[model_version]))
        v = np.asarray(out, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    async def ready(self) -> bool:
        return True

    async def image_limits(self, model_version: str) -> Mapping[str, str] | None:
        return self.limits

    async def served_version(self) -> str | None:
        return self.version

    async def close(self) -> None:
        pass


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


class InMemoryStore:
    """The vector database in memory: collections of (item, vector), index records and the
    active pointer, profiles per model version, the interaction log and popularity.
    ``InMemoryStore(items, index)`` starts with one active collection."""

    def __init__(self, items: Mapping[str, tuple[Item, np.ndarray]] | None = None,
                 index: IndexInfo | None = None) -> None:
        self.collections: dict[str, dict[str, tuple[Item, np.ndarray]]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.pointer: str | None = None
        self.profiles_by_collection: dict[str, dict[str, UserProfile]] = {}
        self.events: dict[str, Interaction] = {}
        self.down = False  # simulate Milvus being away
        self.building: dict[str, IndexInfo] = {}
        self.changes: dict[str, CatalogChange] = {}  # the change log: latest per item
        self.images: dict[str, bytes] = {}
        if index is not None:
            self.collections[index.collection] = dict(items or {})
            self.records[index.collection] = {"info": index}
            self.pointer = index.collection

    # ------------------------------------------------------------------ test conveniences
    @property
    def index(self) -> IndexInfo | None:
        return self.records[self.pointer]["info"] if self.pointer else None

    @property
    def items(self) -> dict[str, tuple[Item, np.ndarray]]:
        """The items of the active collection."""
        return self.collections[self.pointer] if self.pointer else {}

    @property
    def profiles(self) -> dict[str, UserProfile]:
        """The profiles beside the active collection."""
        index = self.index
        return self.profiles_by_collection.setdefault(
            users_collection(index), {}) if index else {}

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("fake Milvus is down")

    def _rows(self, index: IndexInfo) -> dict[str, tuple[Item, np.ndarray]]:
        return self.collections.get(index.collection, {})

    # ------------------------------------------------------------------ CatalogReads
    async def active_index(self) -> IndexInfo | None:
        self._check()
        return self.index

    async def get_vectors(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, np.ndarray]:
        self._check()
        rows = self._rows(index)
        return {i: rows[i][1] for i in ids if i in rows}

    async def get_items(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, Item]:
        rows = self._rows(index)
        return {i: rows[i][0] for i in ids if i in rows}

    async def search(self, index: IndexInfo, vector: np.ndarray, k: int,
                     conditions: Sequence[Condition], *,
                     with_vectors: bool = False) -> list[ScoredItem]:
        self._check()
        hits = [ScoredItem(item, _cosine(v, vector), v if with_vectors else None)
                for item, v in self._rows(index).values()
                if all(matches(item.value(c.field), c) for c in conditions)]
        return sorted(hits, key=lambda h: (-h.score, h.item.id))[:k]

    async def search_many(self, index: IndexInfo, vectors: Sequence[np.ndarray], k: int,
                          conditions: Sequence[Condition], *,
                          with_vectors: bool = False) -> list[list[ScoredItem]]:
        return [await self.search(index, v, k, conditions, with_vectors=with_vectors)
                for v in vectors]

    async def neighbours(self, index: IndexInfo, item_id: str, k: int,
                         conditions: Sequence[Condition]) -> list[ScoredItem] | None:
        vectors = await self.get_vectors(index, [item_id])
        if item_id not in vectors:
            return None
        return await self.search(index, vectors[item_id], k, conditions)

    async def sample_items(self, index: IndexInfo, conditions: Sequence[Condition],
                           limit: int) -> list[Item]:
        self._check()
        return [it for it, _ in self._rows(index).values()
                if all(matches(it.value(c.field), c) for c in conditions)][:limit]

    async def building_indexes(self) -> list[IndexInfo]:
        self._check()
        return list(self.building.values())

    # ------------------------------------------------------------------ UserState, UserLog
    def _profiles(self, index: IndexInfo) -> dict[str, UserProfile]:
        return self.profiles_by_collection.setdefault(users_collection(index), {})

    async def get_profile(self, index: IndexInfo, user_id: str, *,
                          for_update: bool = True) -> UserProfile | None:
        self._check()
        return self._profiles(index).get(user_id)

    async def get_profiles(self, index: IndexInfo, user_ids: Sequence[str]
                           ) -> Mapping[str, UserProfile]:
        self._check()
        profiles = self._profiles(index)
        return {u: profiles[u] for u in user_ids if u in profiles}

    async def put_profile(self, index: IndexInfo, profile: UserProfile) -> None:
        self._check()
        self._profiles(index)[profile.user_id] = profile

    def profile_batches(self, index: IndexInfo, since: float = 0.0,
                        batch_size: int = 512) -> Iterator[list[UserProfile]]:
        chosen = [p for p in self._profiles(index).values() if p.updated_at >= since]
        for start in range(0, len(chosen), batch_size):
            yield chosen[start:start + batch_size]

    async def log_interaction(self, event: Interaction) -> None:
        self._check()
        self.events[event.event_id] = event

    async def event_logged(self, event_id: str) -> bool:
        self._check()
        return event_id in self.events

    def interactions(self) -> list[Interaction]:
        return sorted(self.events.values(), key=lambda e: (e.at, e.event_id))

    async def recent_items(self, user_ids: Sequence[str], limit: int
                           ) -> Mapping[str, tuple[str, ...]]:
        self._check()
        out: dict[str, tuple[str, ...]] = {}
        for user in user_ids:
            mine = sorted((e for e in self.events.values() if e.user_id == user),
                          key=lambda e: -e.at)
            if mine:
                out[user] = tuple(dict.fromkeys(e.item_id for e in mine))[:limit]
        return out

    @property
    def pop(self) -> dict[str, float]:
        """Weighted counts derived from the log, as the Milvus store derives them."""
        scores: dict[str, float] = {}
        for e in self.events.values():
            scores[e.item_id] = scores.get(e.item_id, 0.0) + e.weight
        return scores

    async def popularity(self, ids: Sequence[str]) -> Mapping[str, float]:
        pop = self.pop
        return {i: pop[i] for i in ids if i in pop}

    async def most_popular(self, limit: int) -> list[tuple[str, float]]:
        return sorted(self.pop.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    async def close(self) -> None:
        pass


class FakeItemWriter:
    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.upserts = 0

    def upsert(self, collection: str, rows: Sequence[dict[str, Any]]) -> None:
        self.store._check()
        if collection not in self.store.collections:
            raise BackendUnavailable(f"collection {collection} does not exist")
        self.upserts += 1
        for row in rows:
            fingerprint = row["attributes"].get("_fp", "")
            self.store.collections[collection][row["id"]] = (
                item_from_row(row), np.asarray(row["vector"], dtype=np.float32))
            self.store.records.setdefault(f"fp:{collection}", {})[row["id"]] = fingerprint

    def flush(self, collection: str) -> None:
        pass

    def id_problem(self, item_id: str) -> str | None:
        return "the fake refuses ids with '!'" if "!" in item_id else None

    async def put_items(self, collection: str, items: Sequence[tuple[Item, np.ndarray]],
                        fingerprint: str | Sequence[str] = "") -> None:
        prints = ([fingerprint] * len(items) if isinstance(fingerprint, str)
                  else list(fingerprint))
        self.upsert(collection, [item_row(it, v, fp)
                                 for (it, v), fp in zip(items, prints, strict=True)])

    async def remove_items(self, collection: str, ids: Sequence[str]) -> set[str]:
        self.store._check()
        rows = self.store.collections.get(collection, {})
        found = {i for i in ids if i in rows}
        for i in found:
            del rows[i]
        return found

    async def fingerprints_of(self, collection: str, ids: Sequence[str]) -> dict[str, str]:
        prints = self.fingerprints(collection)
        return {i: prints[i] for i in ids if i in prints}

    def fingerprints(self, collection: str) -> dict[str, str]:
        rows = self.store.collections.get(collection, {})
        stored = self.store.records.get(f"fp:{collection}", {})
        return {i: stored.get(i, "") for i in rows}


class FakeIndexAdmin:
    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.switches: list[str] = []

    def ensure_items_collection(self, collection: str, dim: int) -> None:
        self.store.collections.setdefault(collection, {})

    def has_collection(self, collection: str) -> bool:
        return collection in self.store.collections

    def count(self, collection: str) -> int:
        return len(self.store.collections.get(collection, {}))

    def vector_dim(self, collection: str) -> int:
        rows = self.store.collections[collection]
        return int(next(iter(rows.values()))[1].shape[0]) if rows else 0

    def item_vectors(self, collection: str) -> tuple[list[str], np.ndarray]:
        rows = self.store.collections[collection]
        ids = sorted(rows)
        return ids, np.asarray([rows[i][1] for i in ids], dtype=np.float32)

    def write_index_record(self, info: IndexInfo,
                           extra: Mapping[str, Any] | None = None) -> None:
        self.store.records[info.collection] = {"info": info, **copy.deepcopy(dict(extra or {}))}

    def read_index_record(self, collection: str) -> dict[str, Any] | None:
        record = self.store.records.get(collection)
        if record is None or "info" not in record:
            return None
        info: IndexInfo = record["info"]
        return {"collection": info.collection, "model_version": info.model_version,
                "dim": info.dim, "facets": dict(info.facets), "count": info.count,
                **{k: v for k, v in record.items() if k != "info"}}

    def index_info(self, collection: str) -> IndexInfo | None:
        record = self.store.records.get(collection)
        return record["info"] if record and "info" in record else None

    def active_index(self) -> IndexInfo | None:
        return self.store.index

    def activate(self, collection: str) -> None:
        self.store._check()
        self.switches.append(collection)
        self.store.pointer = collection

    def point_alias(self, alias: str, collection: str) -> bool:
        return False  # like Milvus Lite

    def mark_building(self, info: IndexInfo) -> None:
        self.store.building[info.collection] = info

    def unmark_building(self, collection: str) -> None:
        self.store.building.pop(collection, None)


class FakeChangeLog:
    def __init__(self, store: InMemoryStore) -> None:
        self.store = store

    async def prepare(self) -> None:
        pass

    async def record(self, changes: Sequence[CatalogChange],
                     images: Mapping[str, bytes] | None = None) -> None:
        self.store._check()
        for ch in changes:
            self.store.changes[ch.item_id] = ch
            self.store.images.pop(ch.item_id, None)
        self.store.images.update(images or {})

    async def since(self, at: float) -> list[CatalogChange]:
        return sorted((c for c in self.store.changes.values() if c.at >= at),
                      key=lambda c: c.at)

    async def image(self, item_id: str) -> bytes | None:
        return self.store.images.get(item_id)


class FakeDatabase:
    """Every role over one in-memory store, like visrec.platform.milvus.MilvusDatabase."""

    def __init__(self, store: InMemoryStore | None = None) -> None:
        self.store = store or InMemoryStore()
        self.items = FakeItemWriter(self.store)
        self.admin = FakeIndexAdmin(self.store)
        self.changes = FakeChangeLog(self.store)

    async def close(self) -> None:
        pass


class FakeTritonFleet:
    """The rollout's view of the Triton replicas: what each serves; ``refuse`` makes loading a
    version fail on one replica, as a replica without its files would."""

    def __init__(self, loaded: Sequence[str] = ("1",), refuse: Sequence[str] = (),
                 replicas: Sequence[str] = ("triton-a:8001", "triton-b:8001")) -> None:
        self.loaded = {r: sorted(loaded, key=int) for r in replicas}
        self.refuse = set(refuse)
        self.history: list[list[str]] = []
        self.served = sorted(loaded, key=int)

    def replicas(self) -> list[str]:
        return sorted(self.loaded)

    def durable(self) -> list[str]:
        return list(self.served)

    async def ready(self) -> list[str]:
        return sorted(set.intersection(*(set(v) for v in self.loaded.values())), key=int)

    async def serve(self, versions: Sequence[str]) -> list[str]:
        from visrec.export.indexing.triton_fleet import RolloutError

        wanted = sorted(versions, key=int)
        self.history.append(wanted)
        bad = sorted(set(versions) & self.refuse)
        if bad:
            raise RolloutError(f"Triton replica {self.replicas()[-1]} cannot load {bad}")
        self.served = wanted
        for replica in self.loaded:
            self.loaded[replica] = wanted
        return self.replicas()

    async def verify(self, versions: Sequence[str]) -> list[str]:
        from visrec.export.indexing.triton_fleet import RolloutError

        lacking = [r for r, v in self.loaded.items() if not set(versions) <= set(v)]
        if lacking:
            raise RolloutError(f"Triton replica(s) without version(s) {list(versions)}: "
                               f"{lacking}")
        return self.replicas()

    async def close(self) -> None:
        pass
