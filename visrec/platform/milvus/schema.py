"""Every Milvus collection visrec writes, in one place: names, fields, how each is created, and
how rows are made from and read back into domain objects. Whoever writes a row and whoever reads
it import the same names from here, so a renamed field cannot drift between ingest and serving.

| collection | key | holds |
| --- | --- | --- |
| ``items_v<N>`` | item id | the catalog embedded by model version N |
| ``users_v<N>`` | user id | profiles in version N's embedding space |
| ``interaction_log`` | event id | the interaction log: the source of truth of every count |
| ``catalog_changes`` | item id | the latest online change of each item (UpsertItems, DeleteItems) |
| ``item_images`` | item id # n | images of items upserted online, chunked (rollouts re-embed) |
| ``visrec_meta`` | record key | index records, indexes being built, the active-index pointer |

The interaction log is append-only and keyed by the event's idempotency key, so a retry adds
nothing; popularity and a user's recent items are derived from it, so they are exact however many
gateways write at once. (Before it, ``interactions`` held the log as JSON and ``item_popularity``
a read-modify-write counter that concurrent replicas lost increments of; ``interactions`` is
copied into the log the first time the log is opened.)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visrec.platform.domain import CatalogChange, IndexInfo, Interaction, Item, UserProfile

META_COLLECTION = "visrec_meta"
EVENTS_COLLECTION = "interaction_log"
LEGACY_EVENTS_COLLECTION = "interactions"
CHANGES_COLLECTION = "catalog_changes"
IMAGES_COLLECTION = "item_images"
# Characters of base64 per row of an image (a Milvus VARCHAR holds at most 65,535; Lite does not
# enforce it, the server does).
IMAGE_CHUNK = 60_000
BUILDING_PREFIX = "building:"
POINTER_KEY = "pointer:items"
ID_MAX_LENGTH = 512
# Item columns a read returns (the vector only when asked for).
ITEM_FIELDS = ["id", "name", "category", "subcategory", "image_uri", "attributes"]
# Kept in an item's attributes JSON, never shown to callers: what the catalog line and its image
# were when the row was embedded (ingest re-embeds a row only when it changed).
FINGERPRINT = "_fp"
# Milvus caps a query's offset + limit.
QUERY_PAGE = 16384
# Build parameters per index type (AUTOINDEX and FLAT need none); search passes ef (HNSW) and
# nprobe (IVF) together, each index reads its own.
INDEX_BUILD_PARAMS: dict[str, dict[str, int]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
}


def items_collection(model_version: str | int) -> str:
    return f"items_v{model_version}"


def users_collection(index: IndexInfo) -> str:
    """Profiles live beside the items of the same model version (same embedding space)."""
    return f"users_v{index.model_version}"


def index_key(collection: str) -> str:
    return f"index:{collection}"


def search_params(k: int) -> dict[str, Any]:
    return {"metric_type": "COSINE", "params": {"ef": max(64, k), "nprobe": 32}}


# ---------------------------------------------------------------------- creation
def _schema() -> Any:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    return schema


def create_items(c: Any, collection: str, dim: int, index_type: str, timeout: float) -> None:
    from pymilvus import DataType

    schema = _schema()
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("name", DataType.VARCHAR, max_length=1024)
    schema.add_field("category", DataType.VARCHAR, max_length=256)
    schema.add_field("subcategory", DataType.VARCHAR, max_length=256)
    schema.add_field("image_uri", DataType.VARCHAR, max_length=2048)
    schema.add_field("attributes", DataType.JSON)
    params = c.prepare_index_params()
    params.add_index("vector", index_type=index_type, metric_type="COSINE",
                     params=INDEX_BUILD_PARAMS.get(index_type.upper(), {}))
    c.create_collection(collection, schema=schema, index_params=params, timeout=timeout)


def create_users(c: Any, collection: str, dim: int, timeout: float) -> None:
    from pymilvus import DataType

    schema = _schema()
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("state", DataType.JSON)
    params = c.prepare_index_params()
    # Profiles are read by id, never searched: the cheapest index, and one that accepts the
    # zero vector of a profile that has none yet.
    params.add_index("vector", index_type="FLAT", metric_type="L2")
    c.create_collection(collection, schema=schema, index_params=params,
                        consistency_level="Strong", timeout=timeout)


def _create_table(c: Any, name: str, fields: list[tuple[str, str, dict[str, Any]]],
                  consistency: str, timeout: float) -> None:
    """A collection read by id or filter, never searched: Milvus requires a vector field,
    ``unused`` (2-d, FLAT)."""
    from pymilvus import DataType

    schema = _schema()
    schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
    for field, kind, options in fields:
        schema.add_field(field, getattr(DataType, kind), **options)
    params = c.prepare_index_params()
    params.add_index("unused", index_type="FLAT", metric_type="L2")
    c.create_collection(name, schema=schema, index_params=params,
                        consistency_level=consistency, timeout=timeout)


def create_log(c: Any, timeout: float) -> None:
    """The interaction log: who did what to which item when, filterable by user and by item."""
    _create_table(c, EVENTS_COLLECTION, [
        ("user_id", "VARCHAR", {"max_length": ID_MAX_LENGTH}),
        ("item_id", "VARCHAR", {"max_length": ID_MAX_LENGTH}),
        ("kind", "VARCHAR", {"max_length": 32}), ("weight", "FLOAT", {}),
        ("at", "DOUBLE", {}), ("data", "JSON", {})], "Session", timeout)


def create_meta(c: Any, timeout: float) -> None:
    _create_table(c, META_COLLECTION, [("value", "JSON", {})], "Strong", timeout)


def create_changes(c: Any, timeout: float) -> None:
    _create_table(c, CHANGES_COLLECTION, [
        ("op", "VARCHAR", {"max_length": 16}), ("at", "DOUBLE", {}), ("item", "JSON", {}),
        ("chunks", "INT64", {})], "Strong", timeout)


def create_images(c: Any, timeout: float) -> None:
    _create_table(c, IMAGES_COLLECTION, [
        ("item_id", "VARCHAR", {"max_length": ID_MAX_LENGTH}), ("n", "INT64", {}),
        ("data", "VARCHAR", {"max_length": 65535})], "Strong", timeout)


# ---------------------------------------------------------------------- items
def item_row(item: Item, vector: np.ndarray, fingerprint: str = "") -> dict[str, Any]:
    attributes: dict[str, Any] = dict(item.attributes)
    if fingerprint:
        attributes[FINGERPRINT] = fingerprint
    return {
        "id": item.id, "vector": np.asarray(vector, dtype=np.float32).tolist(),
        "name": item.name, "category": item.category, "subcategory": item.subcategory,
        "image_uri": item.image_uri, "attributes": attributes,
    }


def _attributes(entity: Mapping[str, Any]) -> dict[str, Any]:
    attrs = entity.get("attributes") or {}
    return json.loads(attrs) if isinstance(attrs, str) else dict(attrs)


def item_from_row(entity: Mapping[str, Any], item_id: Any = None) -> Item:
    attrs = {k: v for k, v in _attributes(entity).items() if not k.startswith("_")}
    return Item(
        id=str(entity.get("id", item_id)),
        name=entity.get("name", ""),
        category=entity.get("category", ""),
        subcategory=entity.get("subcategory", ""),
        image_uri=entity.get("image_uri", ""),
        attributes=attrs,
    )


def fingerprint_of(entity: Mapping[str, Any]) -> str:
    return str(_attributes(entity).get(FINGERPRINT, ""))


# ---------------------------------------------------------------------- online changes
def change_row(change: CatalogChange, chunks: int) -> dict[str, Any]:
    item = change.item
    fields = ({"name": item.name, "category": item.category, "subcategory": item.subcategory,
               "image_uri": item.image_uri, "attributes": dict(item.attributes)}
              if item is not None else {})
    return {"id": change.item_id, "unused": [0.0, 0.0], "op": change.op, "at": change.at,
            "item": fields, "chunks": chunks}


def change_from_row(row: Mapping[str, Any]) -> CatalogChange:
    fields = row["item"] if isinstance(row["item"], dict) else json.loads(row["item"])
    item = (Item(row["id"], fields.get("name", ""), fields.get("category", ""),
                 fields.get("subcategory", ""), fields.get("image_uri", ""),
                 fields.get("attributes", {})) if row["op"] == "upsert" else None)
    return CatalogChange(row["id"], row["op"], float(row["at"]), item)


def image_rows(item_id: str, image: bytes) -> list[dict[str, Any]]:
    text = base64.b64encode(image).decode()
    return [{"id": f"{item_id}#{n:05d}", "unused": [0.0, 0.0], "item_id": item_id, "n": n,
             "data": text[start:start + IMAGE_CHUNK]}
            for n, start in enumerate(range(0, len(text), IMAGE_CHUNK))]


def image_from_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return base64.b64decode("".join(r["data"] for r in sorted(rows, key=lambda r: r["n"])))


# ---------------------------------------------------------------------- profiles
def profile_row(profile: UserProfile, dim: int) -> dict[str, Any]:
    return {
        "id": profile.user_id,
        "vector": (profile.vector if profile.vector is not None
                   else np.zeros(dim, dtype=np.float32)).tolist(),
        "state": {
            "has_vector": profile.vector is not None,
            "recent_items": list(profile.recent_items), "counts": dict(profile.counts),
            "recent_events": list(profile.recent_events),
            "interactions": profile.interactions, "updated_at": profile.updated_at,
        },
    }


def profile_from_row(user_id: str, row: Mapping[str, Any]) -> UserProfile:
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


PROFILE_UPDATED_AT = 'state["updated_at"]'


# ---------------------------------------------------------------------- events, popularity
def event_row(event: Interaction) -> dict[str, Any]:
    return {"id": event.event_id, "unused": [0.0, 0.0], "user_id": event.user_id,
            "item_id": event.item_id, "kind": event.kind, "weight": float(event.weight),
            "at": float(event.at), "data": dataclasses.asdict(event)}


def event_from_row(row: Mapping[str, Any]) -> Interaction:
    return Interaction(**row["data"])


# ---------------------------------------------------------------------- index records
def meta_row(key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": key, "value": dict(value), "unused": [0.0, 0.0]}


def meta_value(row: Mapping[str, Any]) -> dict[str, Any]:
    value = row["value"]
    return dict(value) if isinstance(value, dict) else dict(json.loads(value))


def index_record(info: IndexInfo, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "collection": info.collection, "model_version": info.model_version, "dim": info.dim,
        "facets": dict(info.facets), "count": info.count, "written_at": time.time(),
        **(extra or {}),
    }


def index_info(record: Mapping[str, Any]) -> IndexInfo:
    return IndexInfo(
        collection=record["collection"], model_version=str(record["model_version"]),
        dim=int(record["dim"]), facets=dict(record.get("facets", {})),
        count=int(record.get("count", 0)),
    )


def pointer_record(collection: str) -> dict[str, Any]:
    return {"collection": collection, "switched_at": time.time()}
