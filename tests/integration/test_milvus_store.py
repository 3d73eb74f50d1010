"""The Milvus adapters against Milvus Lite (embedded) and a real Milvus 2.3.5 standalone server."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from visrec.export.milvus import MilvusDatabase
from visrec.platform.domain import AnyOf, Equals, IndexInfo, Item, Range
from visrec.platform.errors import BackendTimeout, BackendUnavailable
from visrec.platform.milvus.schema import item_row

# Values a catalog may legitimately hold, each a classic way to break out of a string literal.
HOSTILE_VALUES = ['say "hi"', "it's", "back\\slash", 'both \' and "', "x\" or id != \"",
                  "ends with \\", "é ü 中文 🍎", "and, or, not, in [1, 2]", "%_like_%"]


@pytest.fixture(params=["lite", "server"])
def store_uri(request, tmp_path):
    """A store of the test's own: a Milvus Lite file, or a database on the shared server."""
    if request.param == "lite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("milvus_db")


def _fill(db: MilvusDatabase, collection: str) -> IndexInfo:
    """Collections of versions (903, 904) no other test exports: the server is shared."""
    rng = np.random.default_rng(7)
    rows = []
    for i, value in enumerate(HOSTILE_VALUES * 2):
        v = rng.normal(size=8)
        item = Item(f"item-{i}", f"n{i}", "odd" if i % 2 else "even", value,
                    attributes={"label": value, "rank": float(i)})
        rows.append(item_row(item, v / np.linalg.norm(v)))
    db.admin.ensure_items_collection(collection, 8)
    db.items.upsert(collection, rows)
    db.items.flush(collection)
    info = IndexInfo(collection, collection.removeprefix("items_v"), 8,
                     {"label": "string", "rank": "number"}, len(rows))
    db.admin.write_index_record(info)
    return info


async def test_hostile_values_match_exactly_themselves(store_uri):
    db = MilvusDatabase(store_uri, timeout_s=30)
    store = db.store
    info = _fill(db, "items_v903")
    query = np.ones(8, dtype=np.float32)
    for value in HOSTILE_VALUES:
        for conds in ([Equals("label", value)], [AnyOf("subcategory", (value, "nope"))]):
            hits = await store.search(info, query, 50, conds)
            assert len(hits) == 2, (value, conds)
            assert {h.item.attributes["label"] for h in hits} == {value}
    hits = await store.search(info, query, 50, [Range("rank", 3, 6), Equals("category", "odd")])
    assert sorted(h.item.id for h in hits) == ["item-3", "item-5"]
    assert db.admin.count("items_v903") == 2 * len(HOSTILE_VALUES)
    await db.close()


async def test_get_vectors_does_not_let_an_id_widen_the_query(store_uri):
    db = MilvusDatabase(store_uri, timeout_s=30)
    info = _fill(db, "items_v903")
    got = await db.store.get_vectors(info, ["item-1", "x' or id != 'y", 'x" or id != "y'])
    assert list(got) == ["item-1"] and got["item-1"].shape == (8,)
    await db.close()


async def test_active_pointer_switches_atomically(store_uri):
    db = MilvusDatabase(store_uri, timeout_s=30)
    store = db.store
    assert db.admin.active_index() is None  # a store of its own
    try:
        first = _fill(db, "items_v903")
        db.admin.activate("items_v903")
        assert await store.active_index() == first
        second = IndexInfo("items_v904", "904", 8, first.facets, first.count)
        _fill(db, "items_v904")
        db.admin.write_index_record(second)
        db.admin.activate("items_v904")
        assert (await store.active_index()).collection == "items_v904"
        db.admin.activate("items_v903")  # rollback is the same switch backwards
        assert (await store.active_index()).model_version == "903"
    finally:
        await db.close()


async def test_unreachable_milvus_is_unavailable_within_the_deadline():
    store = MilvusDatabase("http://127.0.0.1:1", timeout_s=1.0).store
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises((BackendUnavailable, BackendTimeout)):
        await store.active_index()
    assert loop.time() - start < 5


def test_a_server_uri_may_name_its_database(milvus_server):
    """`http://host:19530/<database>` keeps a deployment (or a test) in its own database:
    pymilvus' MilvusClient ignores the path, so before this every such URI wrote into
    "default" (the catalog-change tests wrote into other tests' collections). The rollout's
    alias, too, lives in that database (pymilvus sends list_aliases without it, so a 2.3.5
    server looked in "default" and the switch failed)."""
    import uuid

    from pymilvus import MilvusClient

    name = f"own_{uuid.uuid4().hex[:8]}"
    client = MilvusClient(uri=milvus_server)
    client.create_database(name)
    own, default = MilvusDatabase(f"{milvus_server}/{name}"), MilvusDatabase(milvus_server)
    try:
        own.admin.ensure_items_collection("items_v906", 8)
        own.admin.ensure_items_collection("items_v907", 8)
        assert own.admin.has_collection("items_v906")
        assert not default.admin.has_collection("items_v906")
        assert own.admin.point_alias("visrec_items", "items_v906")
        assert own.admin.point_alias("visrec_items", "items_v906")  # already there
        assert own.admin.point_alias("visrec_items", "items_v907")  # moved
        assert own.admin.alias_target("visrec_items") == "items_v907"
        assert default.admin.alias_target("visrec_items") != "items_v907"
    finally:
        own.close_sync()
        default.close_sync()
        client.using_database(name)
        with contextlib.suppress(Exception):
            client.drop_alias("visrec_items")
        client.drop_collection("items_v906")
        client.drop_collection("items_v907")
        client.using_database("default")
        client.drop_database(name)
        client.close()
