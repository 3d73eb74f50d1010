"""MilvusVectorStore: items, index records and the active-index pointer in Milvus.

Works the same on Milvus Lite (a local ``*.db`` path, the default) and on a Milvus server
(``http://host:19530``). Milvus Lite has no aliases, so the active index is a pointer record in a
small metadata collection, upserted in one call: switching indexes is atomic everywhere.

pymilvus' client is synchronous: calls run in worker threads, each with a deadline. Library
exceptions are translated here, at the edge, into the gateway's own errors.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from gateway.domain import Condition, FacetType, IndexInfo, Item, ScoredItem
from gateway.errors import BackendTimeout, BackendUnavailable, VisrecError
from gateway.milvus_expr import compile_filter, quote

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
POINTER_KEY = "pointer:items"
ITEM_FIELDS = ["id", "name", "category", "subcategory", "image_uri", "attributes"]
# Milvus caps a query's offset + limit.
QUERY_PAGE = 16384


def items_collection(model_version: str | int) -> str:
    return f"items_v{model_version}"


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
        self._loaded: set[str] = set()

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from pymilvus import MilvusClient

                self._client = MilvusClient(uri=self.uri, token=self._token,
                                            timeout=self._timeout)
            return self._client

    def _sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, translating library errors (for the ingest CLI and threads)."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn(self._connect(), *args, **kwargs)
        except VisrecError:
            raise
        except MilvusException as e:
            text = f"Milvus ({self.uri}): {getattr(e, 'message', e)}"
            if "timeout" in text.lower() or "deadline" in text.lower():
                raise BackendTimeout(text) from e
            raise BackendUnavailable(text) from e
        except (ConnectionError, OSError, RuntimeError) as e:
            raise BackendUnavailable(f"Milvus ({self.uri}) unreachable: {e}") from e
        except Exception as e:  # grpc.RpcError and friends
            if type(e).__module__.startswith("grpc"):
                raise BackendUnavailable(f"Milvus ({self.uri}): {e}") from e
            raise

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
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

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
        info = IndexInfo(
            collection=record["collection"], model_version=str(record["model_version"]),
            dim=int(record["dim"]), facets=dict(record.get("facets", {})),
            count=int(record.get("count", 0)),
        )
        self._ensure_loaded(c, info.collection)
        return info

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
                     conditions: Sequence[Condition]) -> list[ScoredItem]:
        expr = compile_filter(conditions)

        def call(c: Any) -> list[Any]:
            result: list[Any] = c.search(
                index.collection, data=[np.asarray(vector, dtype=np.float32).tolist()],
                anns_field="vector", limit=k, filter=expr, output_fields=ITEM_FIELDS,
                search_params={"metric_type": "COSINE"}, timeout=self._timeout,
            )
            return result

        hits = (await self._run(call))[0]
        return [ScoredItem(_item(h["entity"], h["id"]), float(h["distance"])) for h in hits]

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
            params.add_index("vector", index_type=self._index_type, metric_type="COSINE")
            c.create_collection(collection, schema=schema, index_params=params,
                                timeout=self._timeout)

        self._sync(call)

    def upsert_items(self, collection: str, rows: list[dict[str, Any]]) -> None:
        self._sync(lambda c: c.upsert(collection, rows, timeout=self._timeout))

    def existing_ids(self, collection: str) -> set[str]:
        def call(c: Any) -> set[str]:
            if not c.has_collection(collection, timeout=self._timeout):
                return set()
            self._ensure_loaded(c, collection)
            ids: set[str] = set()
            it = c.query_iterator(collection, batch_size=4096, filter="",
                                  output_fields=["id"], timeout=self._timeout)
            try:
                while batch := it.next():
                    ids.update(r["id"] for r in batch)
            finally:
                it.close()
            return ids

        return self._sync(call)

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
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _item(entity: Mapping[str, Any], item_id: Any = None) -> Item:
    attrs = entity.get("attributes") or {}
    if isinstance(attrs, str):
        attrs = json.loads(attrs)
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
