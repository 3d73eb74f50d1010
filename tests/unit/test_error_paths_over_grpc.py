"""Error paths every RPC can take, over a real in-process gRPC server (in-memory adapters; the
same paths against real Triton and Milvus are in tests/integration/test_resilience.py): a caller
without a valid token is refused by every RPC and nothing is written; a backend's unexpected
error is INTERNAL with a generic message (nothing of the exception leaks); a model that does not
serve the index's version now is UNAVAILABLE (retryable), one in another embedding space is
FAILED_PRECONDITION; a client deadline shorter than the server's cap ends the call at the
client's deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from tests.support import photo
from tests.timing import Stopwatch
from tests.unit.fakes import FakeChangeLog, FakeEmbedder, FakeItemWriter, InMemoryStore
from tests.unit.test_recommender_core import INDEX, _items
from visrec.gateway.api.server import build_gateway
from visrec.gateway.api.status import GENERIC_MESSAGE
from visrec.gateway.config import GatewayConfig
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

TOKEN = "write:valid-token-0123456789"


async def _upserts() -> AsyncIterator[pb.UpsertItemsRequest]:
    yield pb.UpsertItemsRequest(item=pb.Item(id="new-item", name="n", category="c"),
                                image=photo("coffee", "PNG"))


CALLS: dict[str, Callable] = {
    "SimilarItems": lambda s, **kw: s.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=2),
                                                   **kw),
    "Recommend": lambda s, **kw: s.Recommend(pb.RecommendRequest(user_id="u-1", k=2), **kw),
    "SearchByImage": lambda s, **kw: s.SearchByImage(pb.SearchByImageRequest(
        image=photo(), k=2), **kw),
    "RecordInteraction": lambda s, **kw: s.RecordInteraction(pb.RecordInteractionRequest(
        user_id="u-1", item_id="i1", type=pb.INTERACTION_TYPE_CLICK, request_id="r1"), **kw),
    "DeleteItems": lambda s, **kw: s.DeleteItems(pb.DeleteItemsRequest(item_ids=["i2"]), **kw),
    "UpsertItems": lambda s, **kw: s.UpsertItems(_upserts(), **kw),
}


def _state(store: InMemoryStore) -> tuple:
    """Everything a call could write: items and their vectors, the log, changes, profiles."""
    items = {c: {i: (item, v.tobytes()) for i, (item, v) in rows.items()}
             for c, rows in store.collections.items()}
    profiles = {c: {u: (p, None if p.vector is None else p.vector.tobytes())
                    for u, p in users.items()}
                for c, users in store.profiles_by_collection.items()}
    return items, dict(store.events), dict(store.changes), profiles


async def _gateway(config: GatewayConfig, store: InMemoryStore,
                   embedder: FakeEmbedder | None = None):
    gw = build_gateway(config, embedder=embedder or FakeEmbedder(), store=store,
                       editor=FakeItemWriter(store), changes=FakeChangeLog(store),
                       address="127.0.0.1:0", metrics_port=0)
    await gw.start()
    return gw


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"], ids=["none", "wrong"])
@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_every_rpc_refuses_a_caller_without_a_valid_token_and_writes_nothing(rpc, token):
    store = InMemoryStore(_items(), INDEX)
    gw = await _gateway(GatewayConfig(auth_tokens=TOKEN, index_refresh_s=0.2), store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            before = _state(store)
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await CALLS[rpc](stub, metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value.details()
            assert _state(store) == before
            # the same call with the valid token is served: the token was the only difference
            valid = (("authorization", f"Bearer {TOKEN.removeprefix('write:')}"),)
            await CALLS[rpc](stub, metadata=valid, timeout=10)
    finally:
        await gw.stop()


class BrokenStore(InMemoryStore):
    """A store whose reads fail with what no adapter maps: a bug, not a backend outage."""

    async def neighbours(self, *args, **kwargs):
        raise RuntimeError("secret: /var/lib/milvus/token=hunter2")

    async def search(self, *args, **kwargs):
        raise KeyError("secret: /var/lib/milvus/token=hunter2")


@pytest.mark.parametrize("rpc", ["SimilarItems", "SearchByImage"])
async def test_an_unexpected_error_is_internal_with_a_generic_message(rpc):
    gw = await _gateway(GatewayConfig(index_refresh_s=0.2), BrokenStore(_items(), INDEX))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            call = CALLS[rpc](pb_grpc.RecommenderStub(channel),
                              metadata=(("x-request-id", "req-internal"),), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.INTERNAL
            assert e.value.details() == GENERIC_MESSAGE and "secret" not in e.value.details()
            assert ("x-request-id", "req-internal") in tuple(e.value.trailing_metadata())
    finally:
        await gw.stop()


@pytest.mark.parametrize("embedder, code, message", [
    (FakeEmbedder(version="2"), grpc.StatusCode.UNAVAILABLE, "asked 1"),  # not served now
    (FakeEmbedder(dim=8), grpc.StatusCode.FAILED_PRECONDITION, "4-d vectors"),  # wrong space
], ids=["version-not-served", "dimension-mismatch"])
async def test_a_model_that_cannot_embed_for_the_index(embedder, code, message):
    gw = await _gateway(GatewayConfig(index_refresh_s=0.2), InMemoryStore(_items(), INDEX),
                        embedder=embedder)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await CALLS["SearchByImage"](pb_grpc.RecommenderStub(channel), timeout=10)
            assert e.value.code() == code and message in e.value.details(), e.value.details()
    finally:
        await gw.stop()


async def test_a_client_deadline_shorter_than_the_server_cap_ends_the_call_then():
    class SlowEmbedder(FakeEmbedder):
        async def embed(self, images, *, model_version):
            await asyncio.sleep(30)
            return await super().embed(images, model_version=model_version)

    gw = await _gateway(GatewayConfig(request_timeout_s=20, index_refresh_s=0.2),
                        InMemoryStore(_items(), INDEX), embedder=SlowEmbedder())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            with Stopwatch() as watch, pytest.raises(grpc.aio.AioRpcError) as e:
                await CALLS["SearchByImage"](stub, timeout=0.5)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert watch.s < 20  # the client's 0.5 s, not the server's 20 s cap
            # the server gave the abandoned call up: the next one is served at once
            reply = await CALLS["SimilarItems"](stub, timeout=10)
            assert len(reply.items) == 2
    finally:
        await gw.stop()
