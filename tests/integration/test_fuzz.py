"""Property-based fuzzing of every RPC against the real stack (gateway over gRPC, Triton,
Milvus Lite with the ingested catalog): whatever a caller sends, the answer is a result or a
caller's error, never INTERNAL / UNKNOWN, the process keeps serving, a filter never returns an
item it excludes, no id or value widens a Milvus expression (DeleteItems deletes nothing that
was not named), and UpsertItems stores hostile ids and values exactly as sent."""

from __future__ import annotations

import asyncio
import io
import json
import math

import grpc
import numpy as np
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.integration.conftest import serving
from tests.integration.test_ingest import _small_catalog
from tests.support import encode, photo
from visrec.export.indexing.ingest import ingest
from visrec.export.milvus import MilvusDatabase
from visrec.gateway.config import GatewayConfig
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.triton_embedder import TritonEmbedder

FUZZ = settings(max_examples=40,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
         grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED}
HOSTILE = ['"', "'", "\\", '\\"', '" or id != "', "' or 1 == 1 or '", 'x" || id like "%',
           "id in [", "json_contains", "%", "]", "\n", "\u202e", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "😀" * 50, ""]

# protobuf strings are UTF-8: no lone surrogates (the client could not even send them)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
ids = st.one_of(text, st.sampled_from(HOSTILE), st.text("ab\"'\\ ", min_size=300,
                                                        max_size=3000))
floats = st.floats(allow_nan=True, allow_infinity=True)
fields = st.one_of(st.sampled_from(["category", "subcategory", "name", "vendor", "added_in",
                                    "id", "vector", "attributes", "attributes['vendor']"]),
                   text)
value = st.one_of(text, st.sampled_from(HOSTILE))
condition = st.one_of(
    st.builds(lambda f, v: pb.Condition(field=f, equals=v), fields, value),
    st.builds(lambda f, vs: pb.Condition(field=f, any_of=pb.StringSet(values=vs)), fields,
              st.lists(value, max_size=5)),
    st.builds(lambda f, lo, hi: pb.Condition(field=f, range=pb.NumericRange(min=lo, max=hi)),
              fields, floats, floats),
    st.builds(lambda f, lo: pb.Condition(field=f, range=pb.NumericRange(min=lo)), fields, floats),
)
filters = st.builds(lambda cs: pb.Filter(conditions=cs), st.lists(condition, max_size=4))
ks = st.one_of(st.integers(-5, 20), st.sampled_from([0, 1001, 2**31 - 1, -(2**31)]))


def attr(item: pb.Item, name: str) -> object:
    top = {"category": item.category, "subcategory": item.subcategory, "name": item.name}
    if name in top:
        return top[name]
    return item.attributes[name] if name in item.attributes else None


def holds(item: pb.Item, c: pb.Condition) -> bool:
    v = attr(item, c.field)
    kind = c.WhichOneof("test")
    if kind == "equals":
        return v == c.equals
    if kind == "any_of":
        return v in c.any_of.values
    lo = c.range.min if c.range.HasField("min") else -math.inf
    hi = c.range.max if c.range.HasField("max") else math.inf
    return isinstance(v, float) and lo <= v <= hi


async def outcome(call, allowed: frozenset = frozenset()) -> pb.Recommendations | None:
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        assert e.code() not in NEVER - allowed, f"{e.code().name}: {e.details()}"
        assert e.details(), "an error without a message"
        return None


def check_filtered(reply: pb.Recommendations | None, flt: pb.Filter) -> None:
    for scored in reply.items if reply else ():
        for c in flt.conditions:
            assert holds(scored.item, c), f"{scored.item.id} returned despite {c}"


@pytest.fixture
def fuzz_stub(channel: grpc.aio.Channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(channel)


@FUZZ
@given(item_id=ids, k=ks, flt=filters)
async def test_similar_items_fuzz(fuzz_stub, item_id, k, flt):
    reply = await outcome(fuzz_stub.SimilarItems(
        pb.SimilarItemsRequest(item_id=item_id, k=k, filter=flt), timeout=30))
    check_filtered(reply, flt)


@pytest.fixture(scope="module")
def demo_rows(catalog) -> list[dict]:
    return [json.loads(line) for line in catalog.read_text().splitlines()]


def real_conditions(rows: list[dict]) -> st.SearchStrategy[list[pb.Condition]]:
    """Conditions on the catalog's own fields and values: each one matches some items."""
    def values(field: str) -> list:
        return sorted({r[field] for r in rows if field in r})

    added = values("added_in")
    condition = st.one_of(
        st.builds(lambda v: pb.Condition(field="category", equals=v),
                  st.sampled_from(values("category"))),
        st.builds(lambda vs: pb.Condition(field="subcategory", any_of=pb.StringSet(values=vs)),
                  st.lists(st.sampled_from(values("subcategory")), min_size=1, max_size=4)),
        st.builds(lambda v: pb.Condition(field="vendor", equals=v),
                  st.sampled_from(values("vendor"))),
        st.builds(lambda a, b: pb.Condition(field="added_in", range=pb.NumericRange(
            min=min(a, b), max=max(a, b))), st.sampled_from(added), st.sampled_from(added)),
    )
    return st.lists(condition, min_size=1, max_size=3)


def row_holds(row: dict, c: pb.Condition) -> bool:
    v = row.get(c.field)
    kind = c.WhichOneof("test")
    if kind == "equals":
        return v == c.equals
    if kind == "any_of":
        return v in c.any_of.values
    return v is not None and c.range.min <= v <= c.range.max


@FUZZ
@given(data=st.data())
async def test_filters_on_real_items_never_return_what_they_exclude(fuzz_stub, demo_rows, data):
    """Filters built from the catalog's values: what comes back satisfies every condition, and
    something comes back whenever an item other than the query item does."""
    item_id = data.draw(st.sampled_from(["google:1f600", "twitter:1f600"]))
    flt = pb.Filter(conditions=data.draw(real_conditions(demo_rows)))
    reply = await fuzz_stub.SimilarItems(
        pb.SimilarItemsRequest(item_id=item_id, k=20, filter=flt), timeout=30)
    check_filtered(reply, flt)
    matching = [r["id"] for r in demo_rows
                if r["id"] != item_id and all(row_holds(r, c) for c in flt.conditions)]
    assert bool(reply.items) == bool(matching), (len(matching), flt)


@FUZZ
@given(user_id=ids, k=ks, flt=filters, exclude_seen=st.booleans())
async def test_recommend_fuzz(fuzz_stub, user_id, k, flt, exclude_seen):
    reply = await outcome(fuzz_stub.Recommend(
        pb.RecommendRequest(user_id=user_id, k=k, filter=flt, exclude_seen=exclude_seen),
        timeout=30))
    check_filtered(reply, flt)


@FUZZ
@given(image=st.one_of(st.binary(max_size=4096),
                       st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0" + b"\0" * 64,
                                        b"GIF89a" + b"\xff" * 32, b"RIFF\0\0\0\0WEBPVP8 "])),
       k=ks, flt=filters)
async def test_search_by_image_fuzz(fuzz_stub, image, k, flt):
    reply = await outcome(fuzz_stub.SearchByImage(
        pb.SearchByImageRequest(image=image, k=k, filter=flt), timeout=60))
    assert reply is None  # none of these bytes is an image


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def interaction_log(gateway, milvus_lite_uri):
    """The log the shared gateway writes, read directly."""
    db = MilvusDatabase(milvus_lite_uri, timeout_s=60)
    yield db.store
    await db.close()


@FUZZ
@given(user_id=ids, item_id=st.one_of(ids, st.sampled_from(["google:1f600", "twitter:1f602"])),
       kind=st.integers(-3, 12), request_id=ids)
async def test_record_interaction_fuzz(fuzz_stub, interaction_log, user_id, item_id, kind,
                                       request_id):
    """An acknowledged interaction is in the log; a refused one wrote nothing."""
    valid_user = 0 < len(user_id) <= 256
    before = (await interaction_log.recent_items([user_id], 1000)).get(user_id, ()) \
        if valid_user else ()
    try:
        await fuzz_stub.RecordInteraction(pb.RecordInteractionRequest(
            user_id=user_id, item_id=item_id, type=kind, request_id=request_id), timeout=30)
    except grpc.aio.AioRpcError as e:
        assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
            e.code(), e.details())
        assert e.details()
        if valid_user:
            assert (await interaction_log.recent_items([user_id], 1000)).get(user_id, ()) \
                == before
        return
    assert valid_user and item_id in ("google:1f600", "twitter:1f602")
    after = await interaction_log.recent_items([user_id], 1000)
    assert after[user_id][0] == item_id


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzz_shop(triton, catalog, tmp_path_factory):
    """The catalog-change fuzz writes hostile items: into a small shop of its own (its own
    Milvus Lite file and gateway), so no other test reads them."""
    folder = tmp_path_factory.mktemp("fuzz-shop")
    uri = str(folder / "fuzz.db")
    db = MilvusDatabase(uri, timeout_s=60)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=120)
    small = _small_catalog(catalog, folder, 20)
    shop_ids = [json.loads(line)["id"] for line in small.read_text().splitlines()]
    await ingest(small, db.admin, db.items, embedder,
                 model_version="1", changes=db.changes, progress=False)
    await embedder.close()
    config = GatewayConfig(triton_url=triton.grpc_url, milvus_uri=uri, index_refresh_s=0.5)
    async with serving(config) as gw, grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        yield pb_grpc.RecommenderStub(ch), db, shop_ids
    await db.close()


@pytest.fixture(scope="module")
def small_photo() -> bytes:
    return encode(np.asarray(Image.open(io.BytesIO(photo("coffee"))).resize((64, 48))), "PNG")


@FUZZ
@given(item_id=ids, name=text, category=value, vendor=value, real_image=st.booleans(),
       image=st.binary(max_size=512))
async def test_upsert_items_fuzz_stores_exactly_what_it_was_given(
        fuzz_shop, small_photo, item_id, name, category, vendor, real_image, image):
    stub, db, _ = fuzz_shop

    async def requests():
        item = pb.Item(id=item_id, name=name, category=category)
        item.attributes.update({"vendor": vendor})
        yield pb.UpsertItemsRequest(item=item, image=small_photo if real_image else image)

    reply = await outcome(stub.UpsertItems(requests(), timeout=60))
    if reply is None:
        return
    assert reply.upserted == 1
    info = await db.store.active_index()
    stored = (await db.store.get_items(info, [item_id]))[item_id]
    assert (stored.id, stored.name, stored.category, stored.attributes["vendor"]) == (
        item_id, name, category, vendor)


@FUZZ
@given(data=st.data())
async def test_delete_items_fuzz_deletes_nothing_it_was_not_given(fuzz_shop, small_photo, data):
    """Real ids among hostile ones: exactly the named items that exist go (and are put back
    for the next example), or nothing does."""
    stub, db, shop_ids = fuzz_shop
    info = await db.store.active_index()
    shop = sorted((await db.store.get_items(info, shop_ids)).values(), key=lambda i: i.id)
    assert shop, "the fuzz shop lost its demo items"
    item_ids = data.draw(st.lists(st.one_of(ids, st.sampled_from([i.id for i in shop])),
                                  max_size=6))
    before = await asyncio.to_thread(db.admin.count, info.collection)
    valid = bool(item_ids) and all(0 < len(i) <= 256 for i in item_ids)
    existing = set(await db.store.get_items(info, list(dict.fromkeys(item_ids)))) \
        if valid else set()
    reply = await outcome(stub.DeleteItems(pb.DeleteItemsRequest(item_ids=item_ids),
                                           timeout=30))
    after = await asyncio.to_thread(db.admin.count, info.collection)
    deleted = reply.deleted if reply is not None else 0
    assert deleted == (len(existing) if reply is not None else 0)
    assert after == before - deleted
    if reply is not None and existing:  # gone; then put the demo items back
        assert not await db.store.get_items(info, sorted(existing))
        async def again():
            for item in shop:
                if item.id in existing:
                    message = pb.Item(id=item.id, name=item.name, category=item.category,
                                      subcategory=item.subcategory)
                    message.attributes.update(dict(item.attributes))
                    yield pb.UpsertItemsRequest(item=message, image=small_photo)
        assert (await stub.UpsertItems(again(), timeout=60)).upserted == len(existing)


async def test_oversize_message_is_refused_and_the_gateway_keeps_serving(fuzz_stub, gateway):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fuzz_stub.SearchByImage(pb.SearchByImageRequest(image=b"\0" * (17 * 2**20), k=1),
                                      timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reply = await fuzz_stub.SimilarItems(pb.SimilarItemsRequest(
        item_id="google:1f600", k=3), timeout=30)
    assert len(reply.items) == 3
