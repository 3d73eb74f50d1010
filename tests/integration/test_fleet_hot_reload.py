"""Hot reload on a fleet: three Triton replicas on one model repository (as on a ReadWriteMany
volume), two gateways spreading calls over them, traffic on every RPC; a roll 1 -> 2 and a
rollback 2 -> 1 with a replica killed and restarted in the middle of each; a replica started
afterwards; a replica that cannot load the new version; and a gateway that cannot load models.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import torch
import tritonclient.grpc.aio as tgrpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import serving
from tests.integration.test_ingest import _small_catalog
from tests.integration.traffic import Traffic
from tests.support import ROOT, free_port
from visrec.export.cli import build_parser
from visrec.export.cli import run as run_export
from visrec.export.indexing.ingest import ingest
from visrec.export.indexing.rollout import Step, rollout
from visrec.export.indexing.triton_fleet import GRPC_ADMIN_HEADER, RolloutError, TritonFleet
from visrec.export.milvus import MilvusDatabase
from visrec.export.repository import MODELS, served_versions, set_served_versions
from visrec.gateway.config import GatewayConfig
from visrec.local.triton_server import TritonServer
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.triton_embedder import TritonEmbedder

KEY = secrets.token_hex(16)
READY_PY = ROOT / "docker" / "triton" / "ready.py"


def ready_gaps(server: TritonServer, repository: Path) -> dict[str, list[str]]:
    """What docker/triton/ready.py (the pods' readiness probe) finds missing on ``server``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("triton_ready", READY_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gaps: dict[str, list[str]] = module.missing(server.http_url, repository)
    return gaps


@pytest.fixture(scope="module")
def fleet_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own repository: version 1 copied from the session's, version 2 exported
    through a 256-d projection head (another embedding space and dimension)."""
    repository = tmp_path_factory.mktemp("fleet-models")
    for model in MODELS:
        (repository / model).mkdir()
        shutil.copytree(model_repository / model / "1", repository / model / "1")
        config = (model_repository / model / "config.pbtxt").read_text()
        (repository / model / "config.pbtxt").write_text(config)
    set_served_versions(repository, [1])
    head = tmp_path_factory.mktemp("fleet-head") / "head.pt"
    torch.manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(1280, 256))
    torch.save({"weight": q.T.contiguous()}, head)
    assert run_export(build_parser().parse_args(
        ["--target", "cpu", "--quiet", "--repository", str(repository), "--head",
         str(head)])) == 2
    assert served_versions(repository) == [1]  # exported, not served until rolled out
    return repository


def replica(repository: Path, folder: Path, name: str) -> TritonServer:
    return TritonServer(repository=repository, http_port=free_port(), grpc_port=free_port(),
                        metrics_port=free_port(), log_file=folder / f"{name}.log",
                        admin_key=KEY)


async def start_all(servers: list[TritonServer]) -> None:
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))


def urls(servers: list[TritonServer]) -> str:
    return ",".join(f"127.0.0.1:{s.grpc_port}" for s in servers)


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(fleet_repository: Path, tmp_path: Path) -> AsyncIterator[list[TritonServer]]:
    servers = [replica(fleet_repository, tmp_path, f"triton-{n}") for n in "abc"]
    try:
        await start_all(servers)
        yield servers
    finally:
        for s in servers:
            await asyncio.to_thread(s.stop)
        set_served_versions(fleet_repository, [1])  # the module's next test starts from 1


async def fill_index(catalog: Path, tmp_path: Path, servers: list[TritonServer]
                     ) -> tuple[str, Path]:
    uri = str(tmp_path / "fleet.db")
    small = _small_catalog(catalog, tmp_path, 300)
    db = MilvusDatabase(uri, timeout_s=60)
    embedder = TritonEmbedder(f"ipv4:{urls(servers)}", timeout_s=120)
    try:
        await ingest(small, db.admin, db.items, embedder, model_version="1", progress=False)
    finally:
        await embedder.close()
        await db.close()
    return uri, small


@pytest.mark.timeout(1200)
async def test_a_fleet_rolls_forward_and_back_while_replicas_die_without_a_failed_request(
        fleet, fleet_repository, catalog, tmp_path, capsys):
    servers = fleet
    uri, small = await fill_index(catalog, tmp_path, servers)
    ids = [json.loads(line)["id"] for line in small.read_text().splitlines()]
    config = GatewayConfig(triton_url=f"ipv4:{urls(servers)}", milvus_uri=uri,
                           index_refresh_s=0.5, popular_refresh_s=1.0)
    control = TritonFleet(urls(servers), fleet_repository, admin_key=KEY)
    db = MilvusDatabase(uri, timeout_s=60)
    embedder = TritonEmbedder(f"ipv4:{urls(servers)}", timeout_s=300)
    events: list[str] = []
    t0 = time.monotonic()

    def note(what: str) -> None:
        events.append(f"+{time.monotonic() - t0:6.1f}s  {what}")

    async def kill_and_restart(server: TritonServer, during: str) -> None:
        note(f"{during}: kill -9 Triton :{server.grpc_port}")
        assert server.process is not None
        server.process.kill()
        server.process.wait(10)
        server.process = None
        await asyncio.to_thread(server.start)
        # It says ready only once it serves what the repository lists: the active version
        # and the one being rolled in, version by version (the pods' readiness probe).
        assert ready_gaps(server, fleet_repository) == {}
        listed = served_versions(fleet_repository)
        serving = (await control.serving(f"127.0.0.1:{server.grpc_port}"))["image_embedding"]
        assert serving == [str(v) for v in listed], (serving, listed)
        note(f"{during}: Triton :{server.grpc_port} back, ready, serving {serving}")

    def observer(victim: TritonServer, during: str):  # type: ignore[no-untyped-def]
        def on_step(step: Step) -> object:
            note(f"{during}: {step.name} ({step.seconds:.1f}s) {step.detail}")
            return kill_and_restart(victim, during) if step.name == "load" else None
        return on_step

    try:
        async with serving(config) as g1, serving(config) as g2:
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{g.port}") for g in (g1, g2)]
            traffic = Traffic([pb_grpc.RecommenderStub(c) for c in channels], items=ids[:40],
                              item=ids[0])
            await traffic.warm_up()
            traffic.start()
            await asyncio.sleep(2)
            forward = await rollout("2", db, control, embedder, catalog=small, grace_s=3,
                                    progress=False, on_step=observer(servers[1], "1 -> 2"))
            switched = next(s for s in forward.steps if s.name == "switch")
            await asyncio.sleep(2)
            back = await rollout("1", db, control, embedder, catalog=None, grace_s=3,
                                 progress=False, on_step=observer(servers[2], "2 -> 1"))
            await asyncio.sleep(2)
            await traffic.stop()
            for c in channels:
                await c.close()

        # A replica added after the rollback (the autoscaler's) serves what the repository
        # lists, version 1, not the newest folder (2).
        late = replica(fleet_repository, tmp_path, "triton-d")
        await asyncio.to_thread(late.start)
        try:
            served = await control.serving(f"127.0.0.1:{late.grpc_port}")
            assert all(v == ["1"] for v in served.values()), served
            assert ready_gaps(late, fleet_repository) == {}
        finally:
            await asyncio.to_thread(late.stop)
    finally:
        await embedder.close()
        await db.close()

    with capsys.disabled():
        print("\n" + forward.render() + "\n" + back.render() + "\n" + "\n".join(events))
        print("answers per RPC and version:", traffic.counts())
        print("degraded:", traffic.degraded[:20], "switched at", switched.started)
    traffic.check_rollout(switched.started + switched.seconds, new="2", old="1")
    assert traffic.counts()["RecordInteraction"] >= 10 and traffic.counts()["Recommend v2"] >= 3
    assert [s.name for s in forward.steps] == ["load", "re-embed", "changes", "verify", "profiles",
                                               "replicas", "switch", "catch-up", "grace",
                                               "unload"]
    for server in servers:
        assert (await control.serving(f"127.0.0.1:{server.grpc_port}"))[
            "image_embedding"] == ["1"]


@pytest.mark.timeout(900)
async def test_a_replica_that_cannot_load_the_new_version_stops_the_rollout_before_the_switch(
        fleet_repository, catalog, tmp_path):
    """The third replica reads a stale copy of the repository without version 2."""
    stale = tmp_path / "stale-models"
    shutil.copytree(fleet_repository, stale, ignore=lambda d, names: [
        n for n in names if n == "2"])
    servers = [replica(fleet_repository, tmp_path, "triton-a"),
               replica(fleet_repository, tmp_path, "triton-b"),
               replica(stale, tmp_path, "triton-stale")]
    await start_all(servers)
    uri, small = await fill_index(catalog, tmp_path, servers)
    control = TritonFleet(urls(servers), fleet_repository, admin_key=KEY)
    db = MilvusDatabase(uri, timeout_s=60)
    embedder = TritonEmbedder(f"ipv4:{urls(servers)}", timeout_s=300)
    config = GatewayConfig(triton_url=f"ipv4:{urls(servers)}", milvus_uri=uri,
                           index_refresh_s=0.5)
    try:
        async with serving(config) as gw:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                traffic = Traffic(pb_grpc.RecommenderStub(channel), item=json.loads(
                    small.read_text().splitlines()[0])["id"])
                traffic.start()
                with pytest.raises(RolloutError) as refused:
                    await rollout("2", db, control, embedder, catalog=small, grace_s=0,
                                  progress=False)
                await asyncio.sleep(1)
                await traffic.stop()
        assert f"127.0.0.1:{servers[2].grpc_port}" in str(refused.value)
        assert f"127.0.0.1:{servers[0].grpc_port}" not in str(refused.value)
        assert (await db.store.active_index()).model_version == "1"  # nothing switched
        assert served_versions(fleet_repository) == [1]  # the durable set was restored
        for server in servers:
            served = await control.serving(f"127.0.0.1:{server.grpc_port}")
            assert served["image_embedding"] == ["1"], (server.grpc_port, served)
        assert traffic.errors == [] and set(v for _, v in traffic.answers) == {"1"}
    finally:
        await embedder.close()
        await db.close()
        for s in servers:
            await asyncio.to_thread(s.stop)


async def test_gateway_credentials_cannot_load_or_unload_a_model(fleet, fleet_repository):
    """The repository API of every replica needs the admin key, which the gateways lack; the
    gateway's own calls (inference, metadata) need none."""
    server = fleet[0]
    async with asyncio.timeout(60):
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            for call in (client.load_model("image_embedding"),
                         client.unload_model("image_embedding"),
                         client.get_model_repository_index()):
                with pytest.raises(InferenceServerException) as refused:
                    await call
                assert "visrec-admin-key" in str(refused.value.message()), refused.value
            wrong = {GRPC_ADMIN_HEADER: "not-the-key"}
            with pytest.raises(InferenceServerException):
                await client.load_model("image_embedding", headers=wrong)
            assert await client.is_model_ready("image_embedding", "1")  # still served
            gateway = TritonEmbedder(f"127.0.0.1:{server.grpc_port}")
            assert await gateway.served_version() == "1"  # metadata needs no key
            await gateway.close()
            await client.load_model("image_embedding", headers={GRPC_ADMIN_HEADER: KEY})
        finally:
            await client.close()
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{server.http_url}/v2/repository/models/image_embedding/unload", data=b"",
        method="POST")
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    assert forbidden.value.code in (401, 403)
    assert await asyncio.to_thread(server.is_ready)
