"""Shared by the unit tests that talk gRPC: a real in-process server with in-memory adapters."""

import grpc
import pytest
import pytest_asyncio

from tests.unit.fakes import FakeChangeLog, FakeEmbedder, FakeItemWriter, InMemoryStore
from tests.unit.test_recommender_core import INDEX, _items
from visrec.gateway.api.server import build_gateway
from visrec.gateway.config import GatewayConfig


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served():
    """(gateway, channel to it), one per test module."""
    store = InMemoryStore(_items(), INDEX)
    gw = build_gateway(GatewayConfig(index_refresh_s=0.2, max_batch_items=5,
                                     max_upsert_bytes=200_000),
                       embedder=FakeEmbedder(), store=store, editor=FakeItemWriter(store),
                       changes=FakeChangeLog(store), address="127.0.0.1:0", metrics_port=0)
    await gw.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}")
    yield gw, channel
    await channel.close()
    await gw.stop()


@pytest.fixture(autouse=True)
def _no_settle_wait(monkeypatch):
    """The fakes' gateways see a building mark at once: no need to wait for Milvus staleness."""
    monkeypatch.setattr("visrec.export.indexing.rollout.MARK_SETTLE_S", 0.0)
