"""The servicer, error table, request ids and metrics over a real in-process gRPC server
(with in-memory adapters: the real ones are exercised in tests/integration)."""

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import bomb_png, photo
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


@pytest.fixture
def stub(served):
    return pb_grpc.RecommenderStub(served[1])


async def test_similar_items_round_trip_names_request_and_model(stub):
    call = stub.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=3),
                             metadata=(("x-request-id", "req-42"),))
    reply = await call
    assert "i0" not in [i.item.id for i in reply.items] and len(reply.items) == 3
    assert reply.request_id == "req-42" and reply.model_version == "1"
    assert reply.items[0].item.attributes["vendor"] in ("google", "twitter")
    assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())


async def test_unsafe_request_id_is_replaced(stub):
    reply = await stub.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=1),
                                    metadata=(("x-request-id", "bad id; " + "x" * 200),))
    assert len(reply.request_id) == 32


@pytest.mark.parametrize("request_, code, message", [
    (pb.SimilarItemsRequest(item_id="i0", k=0), "INVALID_ARGUMENT", "k must be between"),
    (pb.SimilarItemsRequest(item_id="missing", k=3), "NOT_FOUND", "'missing'"),
    (pb.SimilarItemsRequest(item_id="i0", k=3, filter=pb.Filter(conditions=[
        pb.Condition(field="vendor")])), "INVALID_ARGUMENT", "has no test"),
    (pb.SimilarItemsRequest(item_id="i0", k=3, filter=pb.Filter(conditions=[
        pb.Condition(equals="x")])), "INVALID_ARGUMENT", "has no field"),
    (pb.SearchByImageRequest(image=bomb_png(), k=3), "INVALID_ARGUMENT", "too large"),
])
async def test_caller_mistakes_map_to_status_codes(stub, request_, code, message):
    method = stub.SimilarItems if isinstance(request_, pb.SimilarItemsRequest) \
        else stub.SearchByImage
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await method(request_)
    assert err.value.code().name == code and message in err.value.details()


def _upsert(item_id: str, image: bytes, **attributes: object) -> pb.UpsertItemsRequest:
    request = pb.UpsertItemsRequest(item=pb.Item(id=item_id, name=f"new {item_id}",
                                                 category="Flags"), image=image)
    request.item.attributes.update(attributes)
    return request


def counter(text: str, sample: str) -> float:
    line = next((line for line in text.splitlines() if line.startswith(sample + " ")), None)
    return float(line.split()[-1]) if line else 0.0


async def test_upsert_stream_then_delete_over_grpc(stub, served):
    store = served[0].store
    url = f"http://127.0.0.1:{served[0].metrics_port}/metrics"
    before = await asyncio.to_thread(scrape, url)
    images = [photo(name) for name in ("chelsea", "coffee", "astronaut")]

    async def stream():
        for n, image in enumerate(images):
            yield _upsert(f"grpc-{n}", image, vendor="google", added_in=7)

    reply = await stub.UpsertItems(stream())
    assert (reply.upserted, reply.model_version) == (3, "1")
    found = await stub.SearchByImage(pb.SearchByImageRequest(image=images[1], k=1))
    assert found.items[0].item.id == "grpc-1"
    assert found.items[0].item.attributes["added_in"] == 7
    gone = await stub.DeleteItems(pb.DeleteItemsRequest(item_ids=["grpc-0", "grpc-1", "nope"]))
    assert gone.deleted == 2 and "grpc-1" not in store.items and "grpc-2" in store.items
    after = await asyncio.to_thread(scrape, url)
    for op, n in (("upsert", 3), ("delete", 2)):
        sample = f'visrec_catalog_changes_total{{op="{op}"}}'
        assert counter(after, sample) - counter(before, sample) == n


def _bool_attribute() -> pb.UpsertItemsRequest:
    request = _upsert("s", b"x")
    request.item.attributes.fields["vendor"].bool_value = True
    return request


@pytest.mark.parametrize("requests, message", [
    (lambda p: [_upsert("ok-a", p), _upsert("x", b"")], "item #1 ('x'): image is empty"),
    (lambda p: [_upsert("ok-b", p), _upsert("bad\n", p)],
     "item #1 ('bad\\n'): its id contains control characters"),
    (lambda p: [_upsert("ok-c", p), _upsert("u", p, colour="red")],
     "item #1 ('u'): attribute 'colour' is not one the catalog declares"),
    (lambda p: [_upsert("ok-d", p), _upsert("t", p, added_in="soon")],
     "item #1 ('t'): attribute 'added_in' must be a number"),
    (lambda p: [_upsert("ok-e", p), _upsert("ok-e", p)],
     "item #1 ('ok-e'): its id appears twice in the stream"),
    (lambda p: [_bool_attribute()],
     "item #0 ('s'): attribute 'vendor' must be a string or a number, not bool_value"),
    (lambda p: [_upsert(f"many-{n}", b"x") for n in range(6)], "at most 5 items per stream"),
    (lambda p: [_upsert(f"big-{n}", b"x" * 90_000) for n in range(3)],
     "exceed 200000 bytes at item #2"),
    (lambda p: [], "the stream holds no item"),
])
async def test_a_bad_stream_is_refused_whole_naming_the_item(stub, served, requests, message):
    store = served[0].store
    before = dict(store.items)

    async def stream():
        for r in requests(photo()):
            yield r

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpsertItems(stream())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()
    assert store.items == before
    assert not store.changes.keys() & {"ok-a", "ok-b", "ok-c", "ok-d", "ok-e"}


async def test_delete_items_refuses_bad_ids(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteItems(pb.DeleteItemsRequest(item_ids=["i1", ""]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "item #1: item_id is empty" in err.value.details()


async def test_health_serving_once_index_answers(served):
    reply = await health_pb2_grpc.HealthStub(served[1]).Check(
        health_pb2.HealthCheckRequest(service="visrec.v1.Recommender"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_metrics_record_real_status_codes(served, stub):
    gw, _ = served
    await stub.SearchByImage(pb.SearchByImageRequest(image=photo(), k=2))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SimilarItems(pb.SimilarItemsRequest(item_id="missing", k=3))
    text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{gw.metrics_port}/metrics")
    assert 'visrec_requests_total{code="OK",method="SearchByImage"}' in text
    assert 'visrec_requests_total{code="NOT_FOUND",method="SimilarItems"}' in text
    assert 'visrec_request_duration_seconds_count{code="NOT_FOUND",method="SimilarItems"}' in text
    assert 'visrec_stage_duration_seconds_count{stage="embed"}' in text
    assert 'visrec_active_model_info{collection="items_v1",model_version="1"} 1.0' in text
