"""UpsertItems / DeleteItems in the core, and the change log that ingest and rollouts apply,
over in-memory fakes. The same paths run against real Triton and Milvus in
tests/integration/test_catalog_changes.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import photo
from tests.unit.fakes import (
    FakeChangeLog,
    FakeDatabase,
    FakeEmbedder,
    FakeItemWriter,
    FakeTritonFleet,
    InMemoryStore,
)
from tests.unit.test_ingest_and_rollout import write_catalog
from tests.unit.test_recommender_core import INDEX, _items
from visrec.export.indexing.ingest import ingest
from visrec.export.indexing.rollout import rollout
from visrec.export.indexing.triton_fleet import RolloutError
from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.popular import PopularItems
from visrec.gateway.core.recommender import Limits, RecommenderCore
from visrec.platform.domain import IndexInfo, Item, ItemUpsert
from visrec.platform.errors import InvalidArgument, NotFound


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def gateway(store: InMemoryStore, embedder: FakeEmbedder | None = None,
            popular: PopularItems | None = None) -> RecommenderCore:
    index = ActiveIndex(store)
    return RecommenderCore(embedder or FakeEmbedder(), store, index, Limits(max_batch_items=10),
                           popular=popular, clock=Clock(), editor=FakeItemWriter(store),
                           changes=FakeChangeLog(store))


def upsert(item_id: str, image: bytes, **attributes: float | str) -> ItemUpsert:
    return ItemUpsert(Item(item_id, f"name {item_id}", "Flags", "sub", attributes=attributes),
                      image)


async def test_an_upserted_item_is_found_by_its_own_photo_and_replacing_it_moves_its_vector():
    store = InMemoryStore(_items(), INDEX)
    core = gateway(store)
    result = await core.catalog.upsert([upsert("new", photo("coffee"), vendor="google")])
    assert (result.upserted, result.model_version) == (1, "1")
    found = await core.search.search_by_image(photo("coffee"), 1)
    assert found.items[0].item.id == "new" and found.items[0].score == pytest.approx(1.0)
    await core.catalog.upsert([upsert("new", photo("astronaut"), vendor="twitter")])
    assert (await core.search.search_by_image(photo("astronaut"), 1)).items[0].item.id == "new"
    assert (await core.search.search_by_image(photo("coffee"), 1)).items[0].score < 0.99
    assert store.items["new"][0].attributes["vendor"] == "twitter"
    assert store.changes["new"].op == "upsert" and store.images["new"] == photo("astronaut")


async def test_the_same_stream_twice_leaves_the_same_catalog():
    store = InMemoryStore(_items(), INDEX)
    core = gateway(store)
    stream = [upsert(f"n{i}", photo(name)) for i, name in enumerate(("coffee", "rocket"))]
    await core.catalog.upsert(stream)
    first = {i: (it, v.copy()) for i, (it, v) in store.items.items()}
    await core.catalog.upsert(stream)
    assert store.items.keys() == first.keys()
    for i, (item, vector) in store.items.items():
        assert item == first[i][0] and np.array_equal(vector, first[i][1])


@pytest.mark.parametrize("bad, message", [
    (upsert("", b""), "item #1 (''): its id is empty"),
    (upsert("x" * 300, b""), "its id is 300 characters long"),
    (upsert("ctl", b"", vendor="a\x00b"), "attribute 'vendor' contains control characters"),
    (ItemUpsert(Item("long", "n" * 2000), b""), "its name is longer than 1024"),
    (upsert("nan", b"", added_in=float("nan")), "'added_in' must be a finite number"),
    (upsert("str", b"", added_in="x"), "'added_in' must be a number"),
    (upsert("undeclared", b"", colour="red"), "'colour' is not one the catalog declares"),
    (upsert("noimage", b""), "item #1 ('noimage'): image is empty"),
    (upsert("notimage", b"GIF89a-not-really"),
     "item #1 ('notimage'): image is not in a recognised format"),
    (upsert("db!", b""), "item #1 ('db!'): the fake refuses ids with '!'"),
])
async def test_one_bad_item_refuses_the_whole_stream(bad, message):
    store = InMemoryStore(_items(), INDEX)
    core = gateway(store)
    if bad.image == b"" and "image is empty" not in message:
        bad = ItemUpsert(bad.item, photo("rocket"))
    before = dict(store.items)
    with pytest.raises(InvalidArgument, match=None) as err:
        await core.catalog.upsert([upsert("good", photo("coffee")), bad])
    assert message in str(err.value)
    assert store.items == before and not store.changes  # nothing half-applied, nothing logged


async def test_more_items_than_the_limit_are_refused():
    core = gateway(InMemoryStore(_items(), INDEX))
    with pytest.raises(InvalidArgument, match="at most 10 items"):
        await core.catalog.upsert([upsert(f"n{i}", photo()) for i in range(11)])
    with pytest.raises(InvalidArgument, match="at most 10 items"):
        await core.catalog.delete([f"i{i}" for i in range(11)])


async def test_a_deleted_item_leaves_every_answer():
    store = InMemoryStore(_items(), INDEX)
    popular = PopularItems(store, ActiveIndex(store))
    core = gateway(store, popular=popular)
    await core.interactions.record("u", "i3", "click", "r1")
    await core.interactions.record("u", "i2", "click", "r2")
    await popular.refresh()
    assert "i3" in [it.id for it, _ in popular.pool(INDEX.collection)]
    assert await core.catalog.delete(["i3", "i3", "absent"]) == 1
    assert "i3" not in store.items and store.changes["i3"].op == "delete"
    assert "i3" not in [it.id for it, _ in popular.pool(INDEX.collection)]
    with pytest.raises(NotFound):
        await core.search.similar_items("i3", 3)
    for item_id in ("i0", "i1", "i2", "i4", "i5"):
        assert "i3" not in [h.item.id for h in (await core.search.similar_items(item_id, 10)).items]
    recommended = await core.personaliser.recommend("u", 10)
    assert recommended.items and "i3" not in [h.item.id for h in recommended.items]
    assert await core.catalog.delete(["i3"]) == 0


async def test_changes_reach_the_index_a_rollout_is_building_with_its_own_model():
    store = InMemoryStore(_items(), INDEX)
    building = IndexInfo("items_v2", "2", 3, INDEX.facets, 6)
    store.collections["items_v2"] = {i: (it, np.ones(3, np.float32)) for i, (it, _)
                                     in _items().items()}
    store.building["items_v2"] = building
    embedder = FakeEmbedder(versions={"1": 4, "2": 3})
    core = gateway(store, embedder)
    await core.catalog.upsert([upsert("new", photo("coffee"))])
    assert store.collections["items_v1"]["new"][1].shape == (4,)
    assert store.collections["items_v2"]["new"][1].shape == (3,)
    assert sorted(set(embedder.asked)) == ["1", "2"]
    await core.catalog.delete(["i1"])
    assert "i1" not in store.collections["items_v1"] and "i1" not in store.collections["items_v2"]


async def test_an_index_marked_building_whose_version_is_gone_does_not_block_writes():
    store = InMemoryStore(_items(), INDEX)
    store.collections["items_v9"] = {}
    store.building["items_v9"] = IndexInfo("items_v9", "9", 3, INDEX.facets, 0)
    core = gateway(store)  # the embedder serves version 1 only
    result = await core.catalog.upsert([upsert("new", photo("coffee"))])
    assert result.upserted == 1 and "new" in store.items and not store.collections["items_v9"]


async def _logged_changes(store: InMemoryStore) -> None:
    core = gateway(store)
    await core.catalog.upsert([upsert("online-only", photo("coffee"), vendor="v"),
                             upsert("item-1", photo("rocket"), vendor="changed")])
    await core.catalog.delete(["item-2"])


async def test_ingest_applies_the_online_changes_after_the_file(tmp_path):
    db, embedder = FakeDatabase(), FakeEmbedder()
    catalog = write_catalog(tmp_path, 6)
    await ingest(catalog, db.admin, db.items, embedder, progress=False)
    await _logged_changes(db.store)
    again = await ingest(catalog, db.admin, db.items, embedder, changes=db.changes,
                         model_version="1", progress=False)
    items = db.store.items
    assert "online-only" in items and "item-2" not in items
    assert items["item-1"][0].attributes["vendor"] == "changed"  # online wins over the file
    assert again.embedded == 0 and again.expected == 6  # 6 - 1 deleted + 1 new
    assert db.admin.count("items_v1") == 6


async def test_a_rollout_applies_changes_made_before_and_during_it(tmp_path):
    db = FakeDatabase(InMemoryStore())
    embedder = FakeEmbedder(versions={"1": 4, "2": 3})
    catalog = write_catalog(tmp_path, 8)
    await ingest(catalog, db.admin, db.items, embedder, model_version="1", progress=False)
    await _logged_changes(db.store)
    core = gateway(db.store, embedder)

    async def during(step):
        if step.name == "verify":  # after the building mark: the gateway writes both indexes
            await core.catalog.upsert([upsert("during", photo("astronaut"))])
            await core.catalog.delete(["item-5"])
        if step.name == "changes":  # a gateway that had not seen the mark yet: log only
            db.store.building.clear()
            await core.catalog.upsert([upsert("unseen", photo("chelsea"))])
            db.admin.mark_building(db.admin.index_info("items_v2"))

    timeline = await rollout("2", db, FakeTritonFleet(["1"]), embedder, catalog=catalog,
                             grace_s=0, progress=False, on_step=during)
    v2 = db.store.collections["items_v2"]
    assert db.store.pointer == "items_v2"
    assert {"online-only", "during", "unseen"} <= v2.keys()
    assert not {"item-2", "item-5"} & v2.keys()
    assert v2["item-1"][0].attributes["vendor"] == "changed" and v2["during"][1].shape == (3,)
    assert len(v2) == 8 - 2 + 3
    assert not db.store.building  # unmarked after the switch
    switch = next(s.detail for s in timeline.steps if s.name == "switch")
    # "unseen" was embedded by the catch-up just before the switch
    assert "4 online upserts (1 embedded now), 2 online deletes (0 removed now)" in switch


async def test_a_failed_rollout_stops_writing_into_its_index(tmp_path):
    db = FakeDatabase(InMemoryStore())
    embedder = FakeEmbedder(versions={"1": 4, "2": 3})
    catalog = write_catalog(tmp_path, 4)
    await ingest(catalog, db.admin, db.items, embedder, model_version="1", progress=False)
    triton = FakeTritonFleet(["1"])
    marked = []

    def replica_loses_version_2(step):
        marked.append(set(db.store.building))
        triton.loaded["triton-b:8001"] = ["1"]  # the check before the switch fails

    with pytest.raises(RolloutError, match="triton-b:8001"):
        await rollout("2", db, triton, embedder, catalog=catalog, grace_s=0, progress=False,
                      on_step=replica_loses_version_2)
    assert {"items_v2"} in marked  # gateways wrote into it while it was being built
    assert not db.store.building and db.store.pointer == "items_v1"


def test_an_image_is_stored_in_rows_a_milvus_server_accepts():
    from visrec.platform.milvus import schema

    image = np.random.default_rng(0).bytes(200_000)
    rows = schema.image_rows("item", image)
    assert len(rows) == 5 and all(len(r["data"]) <= 65_535 for r in rows)
    assert schema.image_from_rows(list(reversed(rows))) == image
