"""Real servers, started once per test session: Triton on CPU (the model exported by the project's
own export), Milvus Lite with the whole demo catalog ingested, a Milvus standalone server, and the
gateway in-process on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import copy_repository
from tests.support import free_port
from visrec.export.cli import build_parser
from visrec.export.cli import run as run_export
from visrec.export.indexing.ingest import IngestReport, ingest
from visrec.export.indexing.triton_fleet import TritonFleet
from visrec.export.milvus import MilvusDatabase
from visrec.gateway.api.server import Gateway, build_gateway
from visrec.gateway.config import GatewayConfig
from visrec.local.demo_catalog import build_catalog
from visrec.local.milvus_server import MilvusServer
from visrec.local.triton_server import TritonServer
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.triton_embedder import TritonEmbedder


@pytest.fixture(scope="session")
def model_repository(exported_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of this session with the default model as version 1 (the run's one export;
    the hot-reload tests add versions to it, so it is not the checkout's model_repository/)."""
    return copy_repository(exported_v1, tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def version_2(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Version 2: the same backbone through a random orthogonal 1280 -> 256 projection: a
    different embedding space (and dimension) than version 1's."""
    import torch

    head = tmp_path_factory.mktemp("head") / "head256.pt"
    torch.manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(1280, 256))
    torch.save({"weight": q.T.contiguous()}, head)
    version = run_export(build_parser().parse_args(
        ["--target", "cpu", "--quiet", "--repository", str(model_repository),
         "--head", str(head)]))
    assert version >= 2  # the session's repository may hold other tests' versions too
    return str(version)


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(repository=model_repository, http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port(), log_file=log)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def catalog() -> Path:
    return build_catalog()


@pytest.fixture(scope="session")
def milvus_lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "visrec.db")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def ingested(triton: TritonServer, catalog: Path, milvus_lite_uri: str
                   ) -> AsyncIterator[IngestReport]:
    """The whole demo catalog embedded through Triton into Milvus Lite, and made active."""
    db = MilvusDatabase(milvus_lite_uri, timeout_s=60)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=120)
    try:
        yield await ingest(catalog, db.admin, db.items, embedder, model_version="1",
                           progress=False)
    finally:
        await embedder.close()
        await db.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(triton: TritonServer, milvus_lite_uri: str, ingested: IngestReport
                  ) -> AsyncIterator[Gateway]:
    config = GatewayConfig(triton_url=triton.grpc_url, milvus_uri=milvus_lite_uri, max_k=1000,
                           index_refresh_s=0.5)
    async with serving(config) as gw:
        yield gw


@contextlib.asynccontextmanager
async def serving(config: GatewayConfig) -> AsyncIterator[Gateway]:
    """An in-process gateway on a free port (and /metrics on another), SERVING."""
    gw = build_gateway(config, address="127.0.0.1:0", metrics_port=0)
    await gw.start()
    try:
        await wait_serving(f"127.0.0.1:{gw.port}")
        yield gw
    finally:
        await gw.stop()


AB_ARMS = "control=similarity:50, diverse=mmr(0.5):25, pop=similarity|popularity(0.3):25"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def ab_gateway(triton: TritonServer, milvus_lite_uri: str, ingested: IngestReport
                     ) -> AsyncIterator[Gateway]:
    """A second gateway on the same index, running an A/B experiment with QA overrides on."""
    config = GatewayConfig(triton_url=triton.grpc_url, milvus_uri=milvus_lite_uri,
                           experiment="ranking-test", experiment_arms=AB_ARMS,
                           experiment_override=True, index_refresh_s=0.5,
                           popular_refresh_s=1.0)
    async with serving(config) as gw:
        yield gw


async def wait_serving(address: str, within_s: float = 60.0) -> None:
    """Health is NOT_SERVING until the vector store answered; wait for SERVING."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + within_s
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:  # not listening yet
                pass
            assert time.monotonic() < deadline, f"gateway at {address} never became SERVING"
            await asyncio.sleep(0.2)


@pytest_asyncio.fixture(loop_scope="session")
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(channel)


@pytest.fixture(scope="session")
def milvus_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A real Milvus 2.3.5 standalone server (pip package `milvus`); the fault tests restart it
    (same data directory and port)."""
    with MilvusServer(tmp_path_factory.mktemp("milvus-server"), port=free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def milvus_server(milvus_server_process: MilvusServer) -> str:
    """The shared server's URI (its "default" database): read it, write into an own one."""
    return milvus_server_process.uri


@contextlib.contextmanager
def own_database(server_uri: str) -> Iterator[str]:
    """A database of its own on the shared Milvus server, as ``<uri>/<name>`` (what a
    deployment names with VISREC_MILVUS_URI): no other test sees its collections, pointer or
    logs, and it is dropped afterwards with all it holds."""
    from pymilvus import MilvusClient

    name = f"t_{uuid.uuid4().hex[:12]}"
    client = MilvusClient(uri=server_uri)
    client.create_database(name)
    try:
        yield f"{server_uri}/{name}"
    finally:
        client.using_database(name)
        for collection in client.list_collections():
            with contextlib.suppress(Exception):
                for alias in client.describe_collection(collection).get("aliases", ()):
                    client.drop_alias(alias)
            client.drop_collection(collection)
        client.using_database("default")
        client.drop_database(name)
        client.close()


@pytest.fixture
def milvus_db(milvus_server: str) -> Iterator[str]:
    """A test's own database on the Milvus server (see ``own_database``)."""
    with own_database(milvus_server) as uri:
        yield uri


@pytest_asyncio.fixture(loop_scope="session")
async def controls(triton, milvus_lite_uri, model_repository):
    db = MilvusDatabase(milvus_lite_uri, timeout_s=60)
    versions = TritonFleet(triton.grpc_url, model_repository)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=300)
    yield db, versions, embedder
    await embedder.close()
    await versions.close()
    await db.close()
