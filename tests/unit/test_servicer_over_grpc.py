"""The servicer, error table, request ids and metrics over a real in-process gRPC server
(with in-memory adapters: the real ones are exercised in tests/integration)."""

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import bomb_png, photo
from visrec.gateway._pb.visrec.v1 import recommender_pb2 as pb
from visrec.gateway._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc


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
    assert [i.item.id for i in reply.items][:1] != ["i0"] and len(reply.items) == 3
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


async def test_unimplemented_rpcs_say_so(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteItems(pb.DeleteItemsRequest(item_ids=["i0"]))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


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
