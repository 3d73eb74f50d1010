"""UpsertItems and DeleteItems against real Triton and real Milvus, Lite and the server: what a
caller can rely on once a call returns, on the gateway that took it and on another replica, and
through a rollout 1 -> 2 and back.

Each backend gets its own small shop (its own Lite file, or its own database on the server), so
these tests change no state another test reads; each test uses its own item ids and its own
photos (two items with one photo would tie for first place)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from tests.integration.conftest import own_database, serving
from tests.integration.test_ingest import _small_catalog
from tests.support import photo, truncated_png
from tests.timing import eventually
from visrec.export.indexing.ingest import ingest
from visrec.export.indexing.rollout import rollout
from visrec.export.indexing.triton_fleet import TritonFleet
from visrec.export.milvus import MilvusDatabase
from visrec.gateway.api.server import Gateway
from visrec.gateway.config import GatewayConfig
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.triton_embedder import TritonEmbedder

POPULAR_REFRESH_S = 1.0


@dataclass
class Shop:
    backend: str
    uri: str
    db: MilvusDatabase
    catalog: Path
    ids: list[str]
    gateway: Gateway
    other: Gateway  # a second replica on the same Milvus
    stub: pb_grpc.RecommenderStub
    other_stub: pb_grpc.RecommenderStub


def upsert(item_id: str, image: bytes, category: str = "Photos") -> pb.UpsertItemsRequest:
    return pb.UpsertItemsRequest(item=pb.Item(id=item_id, name=f"photo {item_id}",
                                              category=category, subcategory="test"),
                                 image=image)


async def send(stub: pb_grpc.RecommenderStub, requests: Sequence[pb.UpsertItemsRequest]
               ) -> pb.UpsertItemsResponse:
    async def stream() -> AsyncIterator[pb.UpsertItemsRequest]:
        for r in requests:
            yield r

    return await stub.UpsertItems(stream(), timeout=120)


async def first_hit(stub: pb_grpc.RecommenderStub, image: bytes, k: int = 5) -> pb.Recommendations:
    return await stub.SearchByImage(pb.SearchByImageRequest(image=image, k=k), timeout=60)


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["lite", "server"])
async def shop(request, triton, catalog, tmp_path_factory) -> AsyncIterator[Shop]:
    folder = tmp_path_factory.mktemp(f"shop-{request.param}")
    with contextlib.ExitStack() as own:
        if request.param == "lite":
            uri = str(folder / "shop.db")
        else:  # a database of its own on the session's server, dropped afterwards
            uri = own.enter_context(own_database(request.getfixturevalue("milvus_server")))
        small = _small_catalog(catalog, folder, 40)
        db = MilvusDatabase(uri, timeout_s=60)
        embedder = TritonEmbedder(triton.grpc_url, timeout_s=120)
        await ingest(small, db.admin, db.items, embedder, model_version="1", changes=db.changes,
                     progress=False)
        await embedder.close()
        config = GatewayConfig(triton_url=triton.grpc_url, milvus_uri=uri, index_refresh_s=0.5,
                               popular_refresh_s=POPULAR_REFRESH_S)
        async with serving(config) as gw, serving(config) as other:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as ch2:
                ids = [json.loads(line)["id"] for line in small.read_text().splitlines()]
                yield Shop(request.param, uri, db, small, ids, gw, other,
                           pb_grpc.RecommenderStub(ch), pb_grpc.RecommenderStub(ch2))
        await db.close()


async def test_an_upserted_item_is_found_by_its_own_photo_as_soon_as_the_call_returns(shop):
    cat, mug = f"cat-{shop.backend}", f"mug-{shop.backend}"
    before = await asyncio.to_thread(shop.db.admin.count, "items_v1")
    reply = await send(shop.stub, [upsert(cat, photo("chelsea")), upsert(mug, photo("coffee"))])
    assert (reply.upserted, reply.model_version) == (2, "1")
    # Read-your-writes on the replica that took the call: no sleep, no retry.
    hits = await first_hit(shop.stub, photo("chelsea"))
    assert hits.items[0].item.id == cat and hits.items[0].score > 0.999
    assert hits.items[0].item.category == "Photos"
    assert (await first_hit(shop.stub, photo("coffee"))).items[0].item.id == mug
    assert await asyncio.to_thread(shop.db.admin.count, "items_v1") == before + 2
    # Another replica sees it once Milvus' query nodes have the write (measured, bounded).
    started = time.monotonic()

    async def seen_there() -> bool:
        return (await first_hit(shop.other_stub, photo("chelsea"))).items[0].item.id == cat

    await eventually(seen_there, within_s=30, what="the upsert on another replica")
    print(f"\n{shop.backend}: another replica found the upsert after "
          f"{time.monotonic() - started:.2f}s")


async def test_a_new_photo_replaces_the_old_vector(shop):
    item = f"swap-{shop.backend}"
    await send(shop.stub, [upsert(item, photo("astronaut"))])
    await send(shop.stub, [upsert(item, photo("brick"))])
    assert (await first_hit(shop.stub, photo("brick"))).items[0].item.id == item
    old = await first_hit(shop.stub, photo("astronaut"), k=50)
    assert all(h.item.id != item or h.score < 0.99 for h in old.items)
    info = await shop.db.store.active_index()
    rows = await shop.db.store.get_vectors(info, [item])
    assert list(rows) == [item]  # one row: replaced, not added


async def test_the_same_stream_twice_changes_nothing(shop):
    ids = [f"twice-{n}-{shop.backend}" for n in range(3)]
    stream = [upsert(i, photo(name)) for i, name in zip(ids, ("camera", "moon", "page"),
                                                         strict=True)]
    await send(shop.stub, stream)
    info = await shop.db.store.active_index()
    first = await shop.db.store.get_vectors(info, ids)
    count = await asyncio.to_thread(shop.db.admin.count, info.collection)
    await send(shop.stub, stream)
    second = await shop.db.store.get_vectors(info, ids)
    assert await asyncio.to_thread(shop.db.admin.count, info.collection) == count
    assert first.keys() == second.keys() == set(ids)
    for i in ids:
        assert abs(float(first[i] @ second[i]) - 1.0) < 1e-5


async def test_an_image_triton_cannot_decode_refuses_the_whole_stream(shop):
    good, bad = f"good-{shop.backend}", f"cut-{shop.backend}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await send(shop.stub, [upsert(good, photo("hubble_deep_field")),
                               upsert(bad, truncated_png())])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"item #1 ('{bad}')" in err.value.details()
    info = await shop.db.store.active_index()
    assert not await shop.db.store.get_vectors(info, [good, bad])
    assert not {c.item_id for c in await shop.db.changes.since(0.0)} & {good, bad}


async def test_a_deleted_item_leaves_every_answer_and_the_other_replicas_cache(shop):
    gone, kept = shop.ids[5], shop.ids[6]
    user = f"deleter-{shop.backend}"
    for n in range(3):  # the most clicked item of this shop: first in every popular list
        await shop.stub.RecordInteraction(pb.RecordInteractionRequest(
            user_id=f"{user}-{n}", item_id=gone, type=pb.INTERACTION_TYPE_PURCHASE,
            request_id=f"r{n}"))
    await shop.stub.RecordInteraction(pb.RecordInteractionRequest(
        user_id=user, item_id=kept, type=pb.INTERACTION_TYPE_CLICK, request_id="k"))
    info = await shop.db.store.active_index()
    assert shop.other.popular is not None and shop.gateway.popular is not None
    started = time.monotonic()
    while gone not in [it.id for it, _ in shop.other.popular.pool(info.collection)]:
        assert time.monotonic() - started < 10, "the other replica never cached the item"
        await asyncio.sleep(0.1)
    image = (shop.catalog.parent / "images" / "5.png").read_bytes()

    reply = await shop.stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[gone, "never-was"]))
    deleted_at = time.monotonic()
    assert reply.deleted == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await shop.stub.SimilarItems(pb.SimilarItemsRequest(item_id=gone, k=5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    recommended = await shop.stub.Recommend(pb.RecommendRequest(user_id=f"{user}-0", k=30))
    assert recommended.items and gone not in [h.item.id for h in recommended.items]
    for answer in (await shop.stub.Recommend(pb.RecommendRequest(user_id=user, k=30)),
                   await shop.stub.SimilarItems(pb.SimilarItemsRequest(item_id=kept, k=39)),
                   await first_hit(shop.stub, image, k=39)):
        assert answer.items and gone not in [h.item.id for h in answer.items]
    assert gone not in [it.id for it, _ in shop.gateway.popular.pool(info.collection)]
    # The other replica's cached fallback list loses it within its refresh period.
    while gone in [it.id for it, _ in shop.other.popular.pool(info.collection)]:
        assert time.monotonic() - deleted_at < POPULAR_REFRESH_S + 5.0  # + one refresh
        await asyncio.sleep(0.05)
    print(f"\n{shop.backend}: the other replica's fallback list lost the deleted item after "
          f"{time.monotonic() - deleted_at:.2f}s (refresh period {POPULAR_REFRESH_S}s)")
    cold = await shop.other_stub.Recommend(pb.RecommendRequest(user_id="nobody-yet", k=39))
    assert gone not in [h.item.id for h in cold.items]
    assert (await shop.stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[gone]))).deleted == 0


@pytest.mark.timeout(600)
async def test_changes_before_and_during_a_rollout_survive_it_both_ways(
        shop, triton, model_repository, version_2):
    fleet = TritonFleet(triton.grpc_url, model_repository)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=300)
    tag = shop.backend
    before, during, after = f"before-{tag}", f"during-{tag}", f"after-{tag}"
    await send(shop.stub, [upsert(before, photo("rocket"))])
    await shop.stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[shop.ids[10]]))

    async def meanwhile(step):
        if step.name == "verify":  # items_v2 is being built: the gateway writes into both
            await send(shop.stub, [upsert(during, photo("immunohistochemistry"))])
            await shop.stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[shop.ids[11]]))

    try:
        await rollout(version_2, shop.db, fleet, embedder, catalog=shop.catalog, grace_s=1,
                      progress=False, on_step=meanwhile)
        await asyncio.sleep(1.0)  # the gateway follows the pointer (0.5 s)
        for image, item in ((photo("rocket"), before), (photo("immunohistochemistry"), during)):
            hit = await first_hit(shop.stub, image)
            assert hit.model_version == version_2 and hit.items[0].item.id == item
        v2 = await shop.db.store.active_index()
        assert not await shop.db.store.get_items(v2, shop.ids[10:12])

        # On version 2, then back to 1: version 1's index missed these, the rollback applies them.
        await send(shop.stub, [upsert(after, photo("coins"))])
        await shop.stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[shop.ids[12]]))
    finally:
        back = await rollout("1", shop.db, fleet, embedder, catalog=None, grace_s=1,
                             progress=False)
        await fleet.close()
        await embedder.close()
    await asyncio.sleep(1.0)
    hit = await first_hit(shop.stub, photo("coins"))
    assert hit.model_version == "1" and hit.items[0].item.id == after
    v1 = await shop.db.store.active_index()
    assert not await shop.db.store.get_items(v1, shop.ids[10:13])
    assert {before, during, after} <= set(await shop.db.store.get_items(v1, [before, during,
                                                                            after]))
    assert "removed now" in next(s.detail for s in back.steps if s.name == "changes")


def add_product(url: str, photo_file: Path, shot: Path) -> dict[str, object]:
    """A shop owner adds a product in the storefront; what the page showed."""
    from selenium.webdriver.common.by import By

    from tests.integration.test_storefront import chromium, tiles

    driver, wait = chromium()
    try:
        driver.get(url)
        driver.find_element(By.ID, "product-photo").send_keys(str(photo_file))
        driver.find_element(By.ID, "product-name").send_keys("Tabby cat poster")
        driver.find_element(By.ID, "product-category").send_keys("Posters")
        driver.find_element(By.ID, "add-product").click()
        wait.until(lambda d: tiles(d, "product"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        return {
            "added": driver.find_element(By.ID, "product").get_attribute("data-added"),
            "tiles": tiles(driver, "product"),
            "meta": driver.find_element(By.ID, "product-meta").text,
            "first_image_loaded": driver.execute_script(
                "const i = document.querySelector('#product img');"
                "return i.complete && i.naturalWidth > 0"),
            "errors": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"],
        }
    finally:
        driver.quit()


@pytest.mark.timeout(300)
async def test_a_product_added_in_the_storefront_is_found_by_its_photo(shop, tmp_path):
    from tests.integration.test_storefront import SHOTS
    from visrec.local.storefront.server import Storefront, StorefrontServer

    picture = tmp_path / "poster.jpg"
    picture.write_bytes(photo("grass", "PNG"))  # the page uploads PNG bytes named .jpg
    server = StorefrontServer(Storefront(f"127.0.0.1:{shop.gateway.port}", shop.catalog.parent,
                                         uploads_dir=tmp_path / "uploads"), port=0).start()
    try:
        seen = await asyncio.to_thread(add_product, server.url, picture,
                                       SHOTS / f"6-add-a-product-{shop.backend}.png")
    finally:
        server.stop()
    assert str(seen["added"]).startswith("shop-") and seen["tiles"][0] == seen["added"]
    assert "model version 1" in str(seen["meta"]) and seen["first_image_loaded"]
    assert not seen["errors"]
    info = await shop.db.store.active_index()
    added = (await shop.db.store.get_items(info, [str(seen["added"])]))[str(seen["added"])]
    assert (added.name, added.category) == ("Tabby cat poster", "Posters")
