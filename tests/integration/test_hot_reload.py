"""Model hot reload: rolling from version 1 to a genuinely different version 2 (a 256-d
projection head on the backbone) and back, under traffic, never fails a request and never
compares embeddings of two versions."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_ingest import _small_catalog
from tests.integration.traffic import Traffic
from tests.support import ROOT
from visrec.export.indexing.ingest import ingest
from visrec.export.indexing.rollout import rollout
from visrec.export.indexing.triton_fleet import TritonFleet
from visrec.export.milvus import MilvusDatabase
from visrec.export.repository import ENCODER, write_version_atomically
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.triton_embedder import TritonEmbedder


@pytest.mark.timeout(900)
async def test_rolling_to_version_2_and_back_under_traffic(gateway, channel, catalog, version_2,
                                                           controls, capsys):
    db, versions, embedder = controls
    ids = [json.loads(line)["id"] for line in catalog.read_text().splitlines()[:40]]
    traffic = Traffic(pb_grpc.RecommenderStub(channel), items=ids)  # every RPC
    await traffic.warm_up()
    traffic.start()
    await asyncio.sleep(2)
    forward = await rollout(version_2, db, versions, embedder, catalog=catalog, grace_s=3,
                            progress=False)
    switched = next(s for s in forward.steps if s.name == "switch")
    switched_at = switched.started + switched.seconds
    await asyncio.sleep(2)
    back = await rollout("1", db, versions, embedder, catalog=None, grace_s=3,
                         progress=False)
    await asyncio.sleep(2)
    await traffic.stop()
    with capsys.disabled():
        print("\n" + forward.render() + "\n" + back.render())
        print({k: len(v) for k, v in traffic.answers.items()})

    traffic.check_rollout(switched_at, new=version_2, old="1")
    assert [s.name for s in forward.steps] == ["load", "re-embed", "changes", "verify", "profiles",
                                               "replicas", "switch", "catch-up", "grace",
                                               "unload"]
    assert forward.ingest is not None and forward.ingest.embedded == 3822
    assert "nothing to embed" in next(s.detail for s in back.steps if s.name == "re-embed")
    assert await versions.ready() == ["1"]
    assert (await db.store.active_index()).model_version == "1"


@pytest.mark.timeout(600)
async def test_re_serving_a_version_with_replaced_files_has_no_downtime(
        gateway, channel, model_repository, controls):
    """Replace version 1's files (atomically, as export --force does) and load it again
    through the repository API while requests keep coming."""
    _, versions, _ = controls
    traffic = Traffic(pb_grpc.RecommenderStub(channel))
    traffic.start()
    await asyncio.sleep(1)
    source = model_repository / ENCODER / "1"

    def fill(staging: Path) -> None:
        for f in source.iterdir():
            if f.is_file():
                shutil.copy(f, staging / f.name)

    before = (source / "model.onnx").stat().st_ino
    await asyncio.to_thread(write_version_atomically, model_repository, 1, fill, replace=True)
    assert (source / "model.onnx").stat().st_ino != before
    await versions.serve(["1"])
    await asyncio.sleep(2)
    await traffic.stop()
    assert traffic.errors == [], traffic.errors[:5]
    assert len(traffic.answers[("SearchByImage", "1")]) >= 5


@pytest.mark.timeout(900)
async def test_a_killed_rollout_leaves_the_old_version_and_a_rerun_completes(
        triton, catalog, version_2, milvus_db, model_repository, tmp_path):
    """Against a real Milvus server (aliases exist there): kill `visrec-rollout` during the
    re-embedding, check version 1 still serves, run it again to completion, roll back."""
    db = MilvusDatabase(milvus_db, timeout_s=60)
    store = db.store
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=300)
    versions = TritonFleet(triton.grpc_url, model_repository)
    small = _small_catalog(catalog, tmp_path, 600)
    try:
        await versions.serve(["1"])
        first = await ingest(small, db.admin, db.items, embedder, model_version="1",
                             progress=False)
        assert first.collection == "items_v1"
        assert await asyncio.to_thread(db.admin.point_alias, "visrec_items", "items_v1")

        cli = [str(Path(sys.executable).parent / "visrec-rollout"), "--to", version_2,
               "--repository", str(model_repository), "--catalog",
               str(small), "--milvus-uri", milvus_db, "--triton-url", triton.grpc_url,
               "--grace-s", "1", "-q"]
        proc = await asyncio.create_subprocess_exec(
            *cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 300
        while True:
            await asyncio.sleep(0.3)
            assert proc.returncode is None, "the rollout finished before it could be killed"
            assert time.monotonic() < deadline
            count = await _count(db, f"items_v{version_2}")
            if 0 < count < 600:
                break
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert (await store.active_index()).collection == "items_v1"
        assert await asyncio.to_thread(db.admin.alias_target, "visrec_items") == "items_v1"
        assert "1" in await versions.ready()

        rerun = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True,
                                        timeout=600, check=False, cwd=ROOT)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        reused = _reused(rerun.stdout)
        assert 0 < reused < 600, rerun.stdout
        active = await store.active_index()
        assert active.collection == f"items_v{version_2}" and active.dim == 256
        assert active.count == 600
        assert await asyncio.to_thread(db.admin.alias_target, "visrec_items") == \
            f"items_v{version_2}"

        rollback = [cli[0], "--to", "1", "--repository", str(model_repository),
                    "--milvus-uri", milvus_db,
                    "--triton-url", triton.grpc_url, "--grace-s", "1", "-q"]
        back = await asyncio.to_thread(subprocess.run, rollback, capture_output=True, text=True,
                                       timeout=600, check=False, cwd=ROOT)
        assert back.returncode == 0, back.stdout + back.stderr
        assert (await store.active_index()).collection == "items_v1"
        assert await asyncio.to_thread(db.admin.alias_target, "visrec_items") == "items_v1"
    finally:
        await versions.serve(["1"])
        await versions.close()
        await embedder.close()
        await db.close()


async def _count(db: MilvusDatabase, collection: str) -> int:
    def call() -> int:
        return db.admin.count(collection) if db.admin.has_collection(collection) else 0

    return await asyncio.to_thread(call)


def _reused(output: str) -> int:
    """'N already there' of the re-embed line of the timeline."""
    line = next(line for line in output.splitlines() if "re-embed" in line)
    return int(line.split(" embedded")[1].split(", ")[1].split(" already")[0])
