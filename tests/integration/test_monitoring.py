"""A real Prometheus scrapes the real gateway, Triton and Milvus server under traffic; GPU series
(there is no GPU here) are backfilled with promtool. Every panel of every dashboard must then
return data: a panel that queries a metric nothing exports fails."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from tests.integration.conftest import own_database
from tests.integration.test_milvus_store import _fill
from tests.support import ROOT, free_port, photo, truncated_png
from visrec.export.milvus import MilvusDatabase
from visrec.local.panels import dashboards, queries, render
from visrec.local.prometheus_server import PrometheusServer
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.domain import Equals

GPUS = [("0", "GPU-4a1e0c2d-0000-4000-8000-000000000000"),
        ("1", "GPU-4a1e0c2d-0000-4000-8000-000000000001")]


def gpu_openmetrics(now: float, minutes: int = 20, step: int = 15) -> str:
    """DCGM exporter and Triton nv_gpu_* series as an H200 node would export them."""
    times = [now - minutes * 60 + i * step for i in range(minutes * 60 // step)]
    families = {
        "DCGM_FI_DEV_GPU_UTIL": lambda g, i: 55 + 35 * math.sin(i / 9 + g),
        "DCGM_FI_DEV_FB_USED": lambda g, i: 40_000 + 30_000 * g + 200 * (i % 30),
        "DCGM_FI_DEV_FB_FREE": lambda g, i: 143_771 - (40_000 + 30_000 * g + 200 * (i % 30)),
        "DCGM_FI_DEV_POWER_USAGE": lambda g, i: 310 + 150 * math.sin(i / 9 + g),
        "DCGM_FI_DEV_GPU_TEMP": lambda g, i: 48 + 12 * math.sin(i / 20 + g),
        "DCGM_FI_DEV_SM_CLOCK": lambda g, i: 1755 + 20 * (i % 3),
        "nv_gpu_utilization": lambda g, i: (55 + 35 * math.sin(i / 9 + g)) / 100,
        "nv_gpu_memory_used_bytes": lambda g, i: (40_000 + 30_000 * g) * 2**20,
        "nv_gpu_memory_total_bytes": lambda g, i: 143_771 * 2**20,
        "nv_gpu_power_usage": lambda g, i: 310 + 150 * math.sin(i / 9 + g),
        "nv_gpu_power_limit": lambda g, i: 700,
    }
    lines = []
    for name, value in families.items():
        lines.append(f"# TYPE {name} gauge")
        for g, (index, gpu_uuid) in enumerate(GPUS):
            if name.startswith("DCGM"):
                labels = (f'gpu="{index}",UUID="{gpu_uuid}",gpu_uuid="{gpu_uuid}",'
                          f'device="nvidia{index}",modelName="NVIDIA H200",Hostname="gpu-node-1",'
                          'job="dcgm-exporter",instance="dcgm-exporter:9400"')
            else:
                labels = f'gpu_uuid="{gpu_uuid}",job="triton",instance="triton:8002"'
            for i, t in enumerate(times):
                lines.append(f"{name}{{{labels}}} {value(g, i):.4f} {t:.3f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, gateway, ab_gateway, triton, milvus_server_process
               ) -> PrometheusServer:
    data = tmp_path_factory.mktemp("prometheus")
    (data / "tsdb").mkdir()
    om = data / "gpu.om"
    om.write_text(gpu_openmetrics(time.time() - 5))
    proc = subprocess.run([shutil.which("promtool") or "promtool", "tsdb",
                           "create-blocks-from", "openmetrics", str(om), str(data / "tsdb")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    server = PrometheusServer(
        targets={"visrec-gateway": [f"127.0.0.1:{gateway.metrics_port}",
                                    f"127.0.0.1:{ab_gateway.metrics_port}"],
                 "triton": [f"127.0.0.1:{triton.metrics_port}"],
                 # where the launcher found the server's metrics (9091 unless it was taken)
                 "milvus": [f"127.0.0.1:{milvus_server_process.metrics_port}"]},
        data_dir=data, port=free_port(), scrape_interval="1s")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def under_traffic(prometheus, gateway, ab_gateway, milvus_server) -> AsyncIterator[None]:
    """Twelve seconds of real traffic on every path while Prometheus scrapes each second (and
    the Milvus server serves searches, in a database of this module's own)."""
    with own_database(milvus_server) as uri:
        async for _ in _traffic(gateway, ab_gateway, uri):
            yield


async def _traffic(gateway, ab_gateway, uri: str) -> AsyncIterator[None]:
    db = MilvusDatabase(uri, timeout_s=30)
    store = db.store
    info = _fill(db, "items_v905")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as plain_ch, \
            grpc.aio.insecure_channel(f"127.0.0.1:{ab_gateway.port}") as ab_ch:
        plain, ab = pb_grpc.RecommenderStub(plain_ch), pb_grpc.RecommenderStub(ab_ch)
        deadline = time.monotonic() + 12
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await plain.SimilarItems(pb.SimilarItemsRequest(item_id="google:1f34e", k=5))
            if n % 3 == 0:
                await plain.SearchByImage(pb.SearchByImageRequest(image=photo(), k=3))
                with pytest.raises(grpc.aio.AioRpcError):
                    await plain.SearchByImage(pb.SearchByImageRequest(image=truncated_png(), k=3))
            user = f"prom-{uuid.uuid4().hex[:6]}"
            reply = await ab.Recommend(pb.RecommendRequest(user_id=user, k=6))
            req = pb.RecordInteractionRequest(user_id=user, item_id=reply.items[0].item.id,
                                              type=pb.INTERACTION_TYPE_CLICK, request_id="r")
            await ab.RecordInteraction(req)
            await ab.RecordInteraction(req)  # a retry
            await ab.Recommend(pb.RecommendRequest(user_id=user, k=6))
            await store.search(info, np.ones(8, dtype=np.float32), 5, [Equals("label", "it's")])
            await store.sample_items(info, (), 3)
            await asyncio.sleep(0.1)
    await db.close()
    await asyncio.sleep(3)  # a few more scrapes and rule evaluations
    yield


DASHBOARDS = dashboards()


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_returns_data(prometheus, under_traffic, name):
    empty = []
    for q in queries(DASHBOARDS[name]):
        data = prometheus.api("query", query=q.expr)
        values = [float(r["value"][1]) for r in data["result"]]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"panel {q.panel_id} {q.title!r} ({q.ref}): {q.expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_template_variables_find_values(prometheus, under_traffic, name):
    for var in DASHBOARDS[name]["templating"]["list"]:
        if var["type"] != "query" or var["name"] == "namespace":
            continue  # no namespace label outside Kubernetes
        metric, label = var["definition"].removeprefix("label_values(").rstrip(")").split(", ")
        values = prometheus.api(f"label/{label}/values", **{"match[]": metric})
        assert values, f"{name}: variable {var['name']} finds no {label} on {metric}"


def test_recording_rules_and_alerts_load_and_evaluate(prometheus, under_traffic):
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 27
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    alerts = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert "VisrecErrorBudgetBurnFast" not in alerts


def test_panels_render_to_png(prometheus, under_traffic):
    out = ROOT / "artifacts" / "monitoring"
    written = render(prometheus.url, out, minutes=3)
    assert {p.stem for p in written} == set(DASHBOARDS)
    for path in written:
        assert path.stat().st_size > 20_000, path
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
