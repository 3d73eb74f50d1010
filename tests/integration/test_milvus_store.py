"""MilvusVectorStore against Milvus Lite (embedded) and a real Milvus 2.3.5 standalone server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.domain import AnyOf, Equals, IndexInfo, Range
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.milvus_store import MilvusVectorStore

# Values a catalog may legitimately hold, each a classic way to break out of a string literal.
HOSTILE_VALUES = ['say "hi"', "it's", "back\\slash", 'both \' and "', "x\" or id != \"",
                  "ends with \\", "é ü 中文 🍎", "and, or, not, in [1, 2]", "%_like_%"]


@pytest.fixture(params=["lite", "server"])
def store_uri(request, tmp_path):
    if request.param == "lite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("milvus_server")


def _fill(store: MilvusVectorStore, collection: str) -> IndexInfo:
    rng = np.random.default_rng(7)
    rows = []
    for i, value in enumerate(HOSTILE_VALUES * 2):
        v = rng.normal(size=8)
        rows.append({"id": f"item-{i}", "vector": (v / np.linalg.norm(v)).tolist(),
                     "name": f"n{i}", "category": "odd" if i % 2 else "even",
                     "subcategory": value, "image_uri": "", "attributes": {
                         "label": value, "rank": float(i)}})
    store.ensure_items_collection(collection, 8)
    store.upsert_items(collection, rows)
    store.flush(collection)
    info = IndexInfo(collection, "3", 8, {"label": "string", "rank": "number"}, len(rows))
    store.write_index_record(info)
    return info


async def test_hostile_values_match_exactly_themselves(store_uri):
    store = MilvusVectorStore(store_uri, timeout_s=30)
    info = _fill(store, "items_v3")
    query = np.ones(8, dtype=np.float32)
    for value in HOSTILE_VALUES:
        for conds in ([Equals("label", value)], [AnyOf("subcategory", (value, "nope"))]):
            hits = await store.search(info, query, 50, conds)
            assert len(hits) == 2, (value, conds)
            assert {h.item.attributes["label"] for h in hits} == {value}
    hits = await store.search(info, query, 50, [Range("rank", 3, 6), Equals("category", "odd")])
    assert sorted(h.item.id for h in hits) == ["item-3", "item-5"]
    assert store.count("items_v3") == 2 * len(HOSTILE_VALUES)
    await store.close()


async def test_get_vectors_does_not_let_an_id_widen_the_query(store_uri):
    store = MilvusVectorStore(store_uri, timeout_s=30)
    info = _fill(store, "items_v3")
    got = await store.get_vectors(info, ["item-1", "x' or id != 'y", 'x" or id != "y'])
    assert list(got) == ["item-1"] and got["item-1"].shape == (8,)
    await store.close()


async def test_active_pointer_switches_atomically(store_uri):
    store = MilvusVectorStore(store_uri, timeout_s=30)
    if not store_uri.startswith("http"):  # the session's Milvus server has other indexes
        assert await store.active_index() is None
    first = _fill(store, "items_v3")
    store.activate("items_v3")
    assert await store.active_index() == first
    second = IndexInfo("items_v4", "4", 8, first.facets, first.count)
    _fill(store, "items_v4")
    store.write_index_record(second)
    store.activate("items_v4")
    assert (await store.active_index()).collection == "items_v4"
    store.activate("items_v3")  # rollback is the same switch backwards
    assert (await store.active_index()).model_version == "3"
    await store.close()


async def test_unreachable_milvus_is_unavailable_within_the_deadline():
    store = MilvusVectorStore("http://127.0.0.1:1", timeout_s=1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises((BackendUnavailable, BackendTimeout)):
        await store.active_index()
    assert loop.time() - start < 5
