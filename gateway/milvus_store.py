"""MilvusVectorStore: items, index records and the active-index pointer in Milvus.

Works the same on Milvus Lite (a local ``*.db`` path, the default) and on a Milvus server
(``http://host:19530``). Milvus Lite has no aliases, so the active index is a pointer record in a
small metadata collection, upserted in one call: switching indexes is atomic everywhere.

pymilvus' client is synchronous: calls run in worker threads, each with a deadline. Library
exceptions are translated here, at the edge, into the gateway's own errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from gateway.domain import Condition, FacetType, IndexInfo, Interaction, Item, ScoredItem
from gateway.errors import BackendTimeout, BackendUnavailable, VisrecError
from gateway.milvus_expr import compile_filter, quote
from gateway.profiles import UserProfile

log = logging.getLogger(__name__)
T = TypeVar("T")

with warnings.catch_warnings():
    # milvus-lite 2.5.1 imports the deprecated pkg_resources; import it once, quietly, here.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import pymilvus  # noqa: F401  (configures its own loggers on import: do it before ours)

    try:
        import milvus_lite  # noqa: F401
    except ImportError:  # a server-only install
        pass

META_COLLECTION = "visrec_meta"
EVENTS_COLLECTION = "interactions"
POPULARITY_COLLECTION = "item_popularity"
POINTER_KEY = "pointer:items"
ITEM_FIELDS = ["id", "name", "category", "subcategory", "image_uri", "attributes"]
# Milvus caps a query's offset + limit.
QUERY_PAGE = 16384
# Build parameters per index type (AUTOINDEX and FLAT need none); search passes ef (HNSW) and
# nprobe (IVF) together, each index reads its own.
INDEX_BUILD_PARAMS: dict[str, dict[str, int]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
}


def search_params(k: int) -> dict[str, Any]:
    return {"metric_type": "COSINE", "params": {"ef": max(64, k), "nprobe": 32}}


def items_collection(model_version: str | int) -> str:
    return f"items_v{model_version}"


def users_collection(index: IndexInfo) -> str:
    """Profiles live beside the items of the same model version (same embedding space)."""
    return f"users_v{index.model_version}"


def _index_key(collection: str) -> str:
    return f"index:{collection}"


class MilvusVectorStore:
    def __init__(self, uri: str, token: str = "", timeout_s: float = 5.0,
                 index_type: str = "AUTOINDEX") -> None:
        self.uri = uri
        self._token = token
        self._timeout = timeout_s
        self._index_type = index_type
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._loaded: set[str] = set()
        self._created: set[str] = set()
        self._popularity_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from pymilvus import MilvusClient

                # pymilvus shares one connection per (uri, credentials) within a process and
                # close() tears it down for every client: each store gets its own alias.
                self._client = MilvusClient(uri=self.uri, token=self._token,
                                            timeout=self._timeout,
                                            alias=f"visrec-{uuid.uuid4().hex}")
            return self._client

    def _sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, translating library errors (for the ingest CLI and threads)."""
        from pymilvus.exceptions import MilvusException

        with self._idle:
            self._in_flight += 1
        try:
            return fn(self._connect(), *args, **kwargs)
        except VisrecError:
            raise
        except MilvusException as e:
            text = f"Milvus ({self.uri}): {getattr(e, 'message', e)}"
            if "not loaded" in text:
                # A restarted server comes back with its collections released and loads them
                # itself (~25 s on 2.3.5); forget ours so a collection it does not reload is
                # loaded by the next call (defensive: the restart test passes without it).
                self._loaded.clear()
                self._created.clear()
            if "timeout" in text.lower() or "deadline" in text.lower():
                raise BackendTimeout(text) from e
            raise BackendUnavailable(text) from e
        except (ConnectionError, OSError, RuntimeError) as e:
            raise BackendUnavailable(f"Milvus ({self.uri}) unreachable: {e}") from e
        except Exception as e:  # grpc.RpcError and friends
            if type(e).__module__.startswith("grpc"):
                raise BackendUnavailable(f"Milvus ({self.uri}): {e}") from e
            raise
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _wait_idle(self) -> None:
        """Calls abandoned by a cancelled task still run in their thread: let them finish
        (boundedly) before the client is closed under them."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=self._timeout + 1.0)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(self._sync, fn, *args, **kwargs)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(self._timeout + 1.0):
                return await asyncio.to_thread(call)
        except TimeoutError as e:
            raise BackendTimeout(f"Milvus ({self.uri}) did not answer within "
                                 f"{self._timeout:.1f}s") from e

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def _ensure_loaded(self, c: Any, collection: str) -> None:
        if collection not in self._loaded:
            c.load_collection(collection, timeout=self._timeout)
            self._loaded.add(collection)

    # ------------------------------------------------------------------ reads
    def _read_meta(self, c: Any, key: str) -> dict[str, Any] | None:
        if not c.has_collection(META_COLLECTION, timeout=self._timeout):
            return None
        self._ensure_loaded(c, META_COLLECTION)
        rows = c.query(META_COLLECTION, filter=f"id == {quote(key)}", output_fields=["value"],
                       consistency_level="Strong", timeout=self._timeout)
        if not rows:
            return None
        value = rows[0]["value"]
        return value if isinstance(value, dict) else json.loads(value)

    def _active_index(self, c: Any) -> IndexInfo | None:
        pointer = self._read_meta(c, POINTER_KEY)
        if pointer is None:
            return None
        record = self._read_meta(c, _index_key(pointer["collection"]))
        if record is None:
            raise BackendUnavailable(
                f"the active pointer names {pointer['collection']}, which has no index record"
            )
        info = _index_info(record)
        self._ensure_loaded(c, info.collection)
        return info

    def index_info(self, collection: str) -> IndexInfo | None:
        """The index record of ``collection`` (active or not), None when there is none."""
        record = self.read_index_record(collection)
        return _index_info(record) if record is not None else None

    def point_alias(self, alias: str, collection: str) -> bool:
        """Move (or create) a Milvus alias; False where aliases do not exist (Milvus Lite)."""
        def call(c: Any) -> bool:
            from pymilvus.exceptions import MilvusException

            try:
                existing = c.list_aliases(collection, timeout=self._timeout).get("aliases", [])
                if alias in existing:
                    return True
                try:
                    c.alter_alias(collection, alias, timeout=self._timeout)
                except MilvusException:
                    c.create_alias(collection, alias, timeout=self._timeout)
                return True
            except MilvusException as e:
                if "unimplemented" in str(e).lower() or getattr(e, "code", None) == 1:
                    return False
                raise
            except Exception as e:  # Milvus Lite answers UNIMPLEMENTED at the gRPC level
                if "UNIMPLEMENTED" in str(e):
                    return False
                raise

        return self._sync(call)

    def alias_target(self, alias: str) -> str | None:
        def call(c: Any) -> str | None:
            try:
                return str(c.describe_alias(alias, timeout=self._timeout)["collection_name"])
            except Exception:
                return None

        return self._sync(call)

    async def active_index(self) -> IndexInfo | None:
        return await self._run(self._active_index)

    async def get_vectors(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, np.ndarray]:
        # Not MilvusClient.get(): it quotes string ids without escaping them.
        def call(c: Any) -> list[dict[str, Any]]:
            expr = f"id in [{', '.join(quote(i) for i in ids)}]"
            rows: list[dict[str, Any]] = c.query(index.collection, filter=expr,
                                                 output_fields=["id", "vector"],
                                                 timeout=self._timeout)
            return rows

        rows = await self._run(call)
        return {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}

    async def get_items(self, index: IndexInfo, ids: Sequence[str]) -> Mapping[str, Item]:
        def call(c: Any) -> list[dict[str, Any]]:
            expr = f"id in [{', '.join(quote(i) for i in ids)}]"
            rows: list[dict[str, Any]] = c.query(index.collection, filter=expr,
                                                 output_fields=ITEM_FIELDS, timeout=self._timeout)
            return rows

        return {r["id"]: _item(r) for r in await self._run(call)}

    async def search(self, index: IndexInfo, vector: np.ndarray, k: int,
                     conditions: Sequence[Condition], *,
                     with_vectors: bool = False) -> list[ScoredItem]:
        return (await self.search_many(index, [vector], k, conditions,
                                       with_vectors=with_vectors))[0]

    async def search_many(self, index: IndexInfo, vectors: Sequence[np.ndarray], k: int,
                          conditions: Sequence[Condition], *,
                          with_vectors: bool = False) -> list[list[ScoredItem]]:
        expr = compile_filter(conditions)
        fields = [*ITEM_FIELDS, "vector"] if with_vectors else ITEM_FIELDS
        data = [np.asarray(v, dtype=np.float32).tolist() for v in vectors]

        def call(c: Any) -> list[Any]:
            result: list[Any] = c.search(
                index.collection, data=data, anns_field="vector", limit=k, filter=expr,
                output_fields=fields, search_params=search_params(k), timeout=self._timeout,
            )
            return result

        return [
            [ScoredItem(_item(h["entity"], h["id"]), float(h["distance"]),
                        np.asarray(h["entity"]["vector"], dtype=np.float32) if with_vectors
                        else None)
             for h in hits]
            for hits in await self._run(call)
        ]

    async def sample_items(self, index: IndexInfo, conditions: Sequence[Condition],
                           limit: int) -> list[Item]:
        expr = compile_filter(conditions)

        def call(c: Any) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = c.query(index.collection, filter=expr,
                                                 output_fields=ITEM_FIELDS,
                                                 limit=min(limit, QUERY_PAGE),
                                                 timeout=self._timeout)
            return rows

        return [_item(r) for r in await self._run(call)]

    # ------------------------------------------------------------------ user profiles
    def _ensure(self, c: Any, collection: str, build: Callable[[Any], None]) -> None:
        if collection in self._created:
            return
        if not c.has_collection(collection, timeout=self._timeout):
            build(c)
        self._ensure_loaded(c, collection)
        self._created.add(collection)

    def _build_users(self, index: IndexInfo) -> Callable[[Any], None]:
        def build(c: Any) -> None:
            from pymilvus import DataType, MilvusClient

            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=index.dim)
            schema.add_field("state", DataType.JSON)
            params = c.prepare_index_params()
            # Profiles are read by id, never searched: the cheapest index, and one that
            # accepts the zero vector of a profile that has none yet.
            params.add_index("vector", index_type="FLAT", metric_type="L2")
            c.create_collection(users_collection(index), schema=schema, index_params=params,
                                consistency_level="Strong", timeout=self._timeout)

        return build

    async def get_profile(self, index: IndexInfo, user_id: str, *,
                          for_update: bool = True) -> UserProfile | None:
        """``for_update`` (read-modify-write) reads Strong: it must see every replica's last
        write or an interaction is lost. A read only to serve (Recommend) reads Session: this
        replica's own writes, others' within a time tick (~200 ms), and none of Strong's wait
        for the tick, which on a Milvus server is most of a Recommend's latency."""
        collection = users_collection(index)
        consistency = "Strong" if for_update else "Session"

        def call(c: Any) -> list[dict[str, Any]]:
            if collection not in self._created and not c.has_collection(
                    collection, timeout=self._timeout):
                return []
            self._ensure(c, collection, self._build_users(index))
            rows: list[dict[str, Any]] = c.query(
                collection, filter=f"id == {quote(user_id)}", output_fields=["vector", "state"],
                consistency_level=consistency, timeout=self._timeout)
            return rows

        rows = await self._run(call)
        return _profile(user_id, rows[0]) if rows else None

    async def get_profiles(self, index: IndexInfo, user_ids: Sequence[str]
                           ) -> Mapping[str, UserProfile]:
        collection = users_collection(index)

        def call(c: Any) -> list[dict[str, Any]]:
            if not user_ids or (collection not in self._created and not c.has_collection(
                    collection, timeout=self._timeout)):
                return []
            self._ensure(c, collection, self._build_users(index))
            rows: list[dict[str, Any]] = c.query(
                collection, filter=f"id in [{', '.join(quote(u) for u in user_ids)}]",
                output_fields=["id", "vector", "state"], consistency_level="Strong",
                timeout=self._timeout)
            return rows

        return {r["id"]: _profile(r["id"], r) for r in await self._run(call)}

    def profile_batches(self, index: IndexInfo, since: float = 0.0,
                        batch_size: int = 512) -> Iterator[list[UserProfile]]:
        """Every profile of ``index`` updated at or after ``since``, in batches."""
        collection = users_collection(index)
        out: list[list[UserProfile]] = []

        def call(c: Any) -> None:
            if not c.has_collection(collection, timeout=self._timeout):
                return
            self._ensure(c, collection, self._build_users(index))
            it = c.query_iterator(collection, batch_size=batch_size,
                                  filter=f'state["updated_at"] >= {float(since)!r}',
                                  output_fields=["id", "vector", "state"],
                                  timeout=self._timeout)
            try:
                while batch := it.next():
                    out.append([_profile(r["id"], r) for r in batch])
            finally:
                it.close()

        self._sync(call)
        yield from out

    async def put_profile(self, index: IndexInfo, profile: UserProfile) -> None:
        collection = users_collection(index)
        row = {
            "id": profile.user_id,
            "vector": (profile.vector if profile.vector is not None
                       else np.zeros(index.dim, dtype=np.float32)).tolist(),
            "state": {
                "has_vector": profile.vector is not None,
                "recent_items": list(profile.recent_items), "counts": dict(profile.counts),
                "recent_events": list(profile.recent_events),
                "interactions": profile.interactions, "updated_at": profile.updated_at,
            },
        }

        def call(c: Any) -> None:
            self._ensure(c, collection, self._build_users(index))
            c.upsert(collection, [row], timeout=self._timeout)

        await self._run(call)

    # ------------------------------------------------------------------ events, popularity
    @staticmethod
    def _build_keyed(name: str) -> Callable[[Any], None]:
        """A collection of records keyed by id (Milvus requires a vector field: unused)."""

        def build(c: Any) -> None:
            from pymilvus import DataType, MilvusClient

            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
            schema.add_field("score", DataType.FLOAT)
            schema.add_field("data", DataType.JSON)
            params = c.prepare_index_params()
            params.add_index("unused", index_type="FLAT", metric_type="L2")
            c.create_collection(name, schema=schema, index_params=params,
                                consistency_level="Strong", timeout=30)

        return build

    async def log_interaction(self, event: Interaction) -> None:
        row = {"id": event.event_id, "unused": [0.0, 0.0], "score": float(event.weight),
               "data": dataclasses.asdict(event)}

        def call(c: Any) -> None:
            self._ensure(c, EVENTS_COLLECTION, self._build_keyed(EVENTS_COLLECTION))
            c.upsert(EVENTS_COLLECTION, [row], timeout=self._timeout)

        await self._run(call)

    def interactions(self) -> list[Interaction]:
        """The whole interaction log (for training and evaluation jobs)."""

        def call(c: Any) -> list[Interaction]:
            if not c.has_collection(EVENTS_COLLECTION, timeout=self._timeout):
                return []
            self._ensure(c, EVENTS_COLLECTION, self._build_keyed(EVENTS_COLLECTION))
            out = [Interaction(**r["data"]) for r in self._scan(c, EVENTS_COLLECTION, ["data"])]
            return sorted(out, key=lambda e: (e.at, e.event_id))

        return self._sync(call)

    async def add_popularity(self, item_id: str, weight: float) -> None:
        def call(c: Any) -> None:
            self._ensure(c, POPULARITY_COLLECTION, self._build_keyed(POPULARITY_COLLECTION))
            with self._popularity_locks[item_id]:  # read-modify-write, one writer per item
                rows = c.query(POPULARITY_COLLECTION, filter=f"id == {quote(item_id)}",
                               output_fields=["score"], consistency_level="Strong",
                               timeout=self._timeout)
                score = float(rows[0]["score"]) if rows else 0.0
                c.upsert(POPULARITY_COLLECTION, [{
                    "id": item_id, "unused": [0.0, 0.0], "score": score + weight,
                    "data": {"updated_at": time.time()}}], timeout=self._timeout)

        await self._run(call)

    async def popularity(self, ids: Sequence[str]) -> Mapping[str, float]:
        def call(c: Any) -> list[dict[str, Any]]:
            if not ids or not c.has_collection(POPULARITY_COLLECTION, timeout=self._timeout):
                return []
            self._ensure(c, POPULARITY_COLLECTION, self._build_keyed(POPULARITY_COLLECTION))
            rows: list[dict[str, Any]] = c.query(
                POPULARITY_COLLECTION, filter=f"id in [{', '.join(quote(i) for i in ids)}]",
                output_fields=["score"], timeout=self._timeout)
            return rows

        return {r["id"]: float(r["score"]) for r in await self._run(call)}

    async def most_popular(self, limit: int) -> list[tuple[str, float]]:
        def call(c: Any) -> list[tuple[str, float]]:
            if not c.has_collection(POPULARITY_COLLECTION, timeout=self._timeout):
                return []
            self._ensure(c, POPULARITY_COLLECTION, self._build_keyed(POPULARITY_COLLECTION))
            scores: list[tuple[str, float]] = []
            it = c.query_iterator(POPULARITY_COLLECTION, batch_size=4096, filter="",
                                  output_fields=["score"], timeout=self._timeout)
            try:
                while batch := it.next():
                    scores.extend((r["id"], float(r["score"])) for r in batch)
            finally:
                it.close()
            return sorted(scores, key=lambda s: (-s[1], s[0]))[:limit]

        return await self._run(call)

    # ------------------------------------------------------------------ writes (ingest)
    def ensure_meta_collection(self) -> None:
        def call(c: Any) -> None:
            from pymilvus import DataType, MilvusClient

            if c.has_collection(META_COLLECTION, timeout=self._timeout):
                return
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("value", DataType.JSON)
            # Milvus requires a vector field; the metadata collection never searches it.
            schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
            params = c.prepare_index_params()
            params.add_index("unused", index_type="FLAT", metric_type="L2")
            c.create_collection(META_COLLECTION, schema=schema, index_params=params,
                                consistency_level="Strong", timeout=self._timeout)

        self._sync(call)

    def ensure_items_collection(self, collection: str, dim: int) -> None:
        def call(c: Any) -> None:
            from pymilvus import DataType, MilvusClient

            if c.has_collection(collection, timeout=self._timeout):
                return
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("name", DataType.VARCHAR, max_length=1024)
            schema.add_field("category", DataType.VARCHAR, max_length=256)
            schema.add_field("subcategory", DataType.VARCHAR, max_length=256)
            schema.add_field("image_uri", DataType.VARCHAR, max_length=2048)
            schema.add_field("attributes", DataType.JSON)
            params = c.prepare_index_params()
            params.add_index("vector", index_type=self._index_type, metric_type="COSINE",
                             params=INDEX_BUILD_PARAMS.get(self._index_type.upper(), {}))
            c.create_collection(collection, schema=schema, index_params=params,
                                timeout=self._timeout)

        self._sync(call)

    def upsert_items(self, collection: str, rows: list[dict[str, Any]]) -> None:
        self._sync(lambda c: c.upsert(collection, rows, timeout=self._timeout))

    def _scan(self, c: Any, collection: str, fields: list[str],
              batch_size: int = 4096) -> Iterator[dict[str, Any]]:
        """Every row of a loaded collection, in batches of the query iterator."""
        it = c.query_iterator(collection, batch_size=batch_size, filter="", output_fields=fields,
                              timeout=self._timeout)
        try:
            while batch := it.next():
                yield from batch
        finally:
            it.close()

    def existing_fingerprints(self, collection: str, key: str) -> dict[str, str]:
        """id -> attributes[key] of every item in the collection ('' where absent)."""
        def call(c: Any) -> dict[str, str]:
            if not c.has_collection(collection, timeout=self._timeout):
                return {}
            self._ensure_loaded(c, collection)
            return {r["id"]: str((r.get("attributes") or {}).get(key, ""))
                    for r in self._scan(c, collection, ["id", "attributes"])}

        return self._sync(call)

    def item_vectors(self, collection: str) -> tuple[list[str], np.ndarray]:
        """Every item id of a collection and its vector (rows in id order), for training."""
        def call(c: Any) -> tuple[list[str], np.ndarray]:
            self._ensure_loaded(c, collection)
            # Small batches: Milvus Lite 2.5.1 never answers a 4096 x 1280-d batch (~20 MB).
            rows = sorted(self._scan(c, collection, ["id", "vector"], batch_size=256),
                          key=lambda r: r["id"])
            return ([r["id"] for r in rows],
                    np.asarray([r["vector"] for r in rows], dtype=np.float32))

        return self._sync(call)

    def has_collection(self, collection: str) -> bool:
        return self._sync(lambda c: bool(c.has_collection(collection, timeout=self._timeout)))

    def count(self, collection: str) -> int:
        def call(c: Any) -> int:
            self._ensure_loaded(c, collection)
            rows = c.query(collection, filter="", output_fields=["count(*)"],
                           consistency_level="Strong", timeout=self._timeout)
            return int(rows[0]["count(*)"])

        return self._sync(call)

    def vector_dim(self, collection: str) -> int:
        def call(c: Any) -> int:
            for f in c.describe_collection(collection, timeout=self._timeout)["fields"]:
                if f["name"] == "vector":
                    return int(f["params"]["dim"])
            raise BackendUnavailable(f"collection {collection} has no vector field")

        return self._sync(call)

    def flush(self, collection: str) -> None:
        self._sync(lambda c: c.flush(collection, timeout=self._timeout))

    def write_index_record(self, info: IndexInfo, extra: Mapping[str, Any] | None = None) -> None:
        record = {
            "collection": info.collection, "model_version": info.model_version, "dim": info.dim,
            "facets": dict(info.facets), "count": info.count, "written_at": time.time(),
            **(extra or {}),
        }
        self._put_meta(_index_key(info.collection), record)

    def read_index_record(self, collection: str) -> dict[str, Any] | None:
        return self._sync(self._read_meta, _index_key(collection))

    def activate(self, collection: str) -> None:
        """Point the gateway at ``collection``: one upsert, atomic for every reader."""
        self._put_meta(POINTER_KEY, {"collection": collection, "switched_at": time.time()})

    def active_index_sync(self) -> IndexInfo | None:
        return self._sync(self._active_index)

    def _put_meta(self, key: str, value: Mapping[str, Any]) -> None:
        self.ensure_meta_collection()
        row = {"id": key, "value": dict(value), "unused": [0.0, 0.0]}
        self._sync(lambda c: c.upsert(META_COLLECTION, [row], timeout=self._timeout))

    def close_sync(self) -> None:
        self._wait_idle()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _index_info(record: Mapping[str, Any]) -> IndexInfo:
    return IndexInfo(
        collection=record["collection"], model_version=str(record["model_version"]),
        dim=int(record["dim"]), facets=dict(record.get("facets", {})),
        count=int(record.get("count", 0)),
    )


def _profile(user_id: str, row: Mapping[str, Any]) -> UserProfile:
    state = row["state"]
    return UserProfile(
        user_id=user_id,
        vector=np.asarray(row["vector"], dtype=np.float32) if state.get("has_vector") else None,
        recent_items=tuple(state.get("recent_items", ())),
        counts=dict(state.get("counts", {})),
        recent_events=tuple(state.get("recent_events", ())),
        interactions=int(state.get("interactions", 0)),
        updated_at=float(state.get("updated_at", 0.0)),
    )


def _item(entity: Mapping[str, Any], item_id: Any = None) -> Item:
    attrs = entity.get("attributes") or {}
    if isinstance(attrs, str):
        attrs = json.loads(attrs)
    attrs = {k: v for k, v in attrs.items() if not k.startswith("_")}  # internal bookkeeping
    return Item(
        id=str(entity.get("id", item_id)),
        name=entity.get("name", ""),
        category=entity.get("category", ""),
        subcategory=entity.get("subcategory", ""),
        image_uri=entity.get("image_uri", ""),
        attributes=attrs,
    )


def infer_facets(rows: Iterable[Mapping[str, Any]]) -> dict[str, FacetType]:
    """Attribute name -> 'string' | 'number' from catalog rows (booleans count as strings)."""
    kinds: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.items():
            kind = "number" if isinstance(value, int | float) and not isinstance(value, bool) \
                else "string"
            kinds.setdefault(key, set()).add(kind)
    return {k: ("number" if v == {"number"} else "string") for k, v in kinds.items()}
