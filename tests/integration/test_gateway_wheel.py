"""The project's wheel, as a user installs it: into a clean virtualenv with only the runtime
dependencies (from the package index, like scripts/setup), it holds only the visrec namespace,
the recommendation service imports without torch, and its entry points start, serve and answer
health."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import grpc
import pytest

from tests.support import ROOT, free_port
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

SEED = """
import sys, numpy as np
from visrec.platform.domain import IndexInfo, Item
from visrec.export.milvus import MilvusDatabase
from visrec.platform.milvus.schema import item_row
db = MilvusDatabase(sys.argv[1], timeout_s=30)
db.admin.ensure_items_collection("items_v1", 4)
rows = [item_row(Item(f"item-{i}", f"n{i}", "c", "s"), np.eye(4)[i % 4]) for i in range(8)]
db.items.upsert("items_v1", rows)
db.admin.write_index_record(IndexInfo("items_v1", "1", 4, {}, 8))
db.admin.activate("items_v1")
db.close_sync()
"""


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                          **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.mark.timeout(1200)
def test_the_gateway_wheel_installs_clean_and_serves(tmp_path):
    run([sys.executable, "scripts/gen_protos.py"], cwd=ROOT)  # the builder stage's first step
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "w"),
         "."], cwd=ROOT)
    [wheel] = list((tmp_path / "w").glob("visrec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "visrec/platform/_pb/visrec/v1/recommender_pb2.py" in names
    assert "visrec/export/triton_backends/preprocess_model.py" in names
    assert "visrec/local/storefront/static/index.html" in names
    # One import namespace: nothing but visrec/ (and the wheel's own metadata) at the top.
    assert {n.split("/")[0] for n in names} == {"visrec", wheel.name.split("-py3")[0] +
                                                ".dist-info"}, names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin/pip"), "install", "-q", "-c", str(ROOT / "requirements/constraints.txt"),
         str(wheel)])
    # Only the runtime: no torch, no test tools.
    frozen = {line.split("==")[0].split(" @ ")[0].lower()
              for line in run([str(venv / "bin/pip"), "freeze"]).stdout.splitlines()}
    assert not frozen & {"torch", "timm", "pytest", "onnxruntime", "nvidia-pytriton"}, frozen
    assert {"grpcio", "pymilvus", "tritonclient", "visrec"} <= frozen
    site = Path(run([str(venv / "bin/python"), "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    installed = {p.name for p in site.iterdir()}
    assert "visrec" in installed and not {"gateway", "export", "local"} & installed, installed
    # The recommendation service imports without torch (not installed here).
    run([str(venv / "bin/python"), "-c", "import visrec.gateway.api.server, visrec.export.config"])

    db = tmp_path / "milvus.db"
    run([str(venv / "bin/python"), "-c", SEED, str(db)])
    port = free_port()
    env = {**os.environ, "VISREC_GRPC_ADDRESS": f"127.0.0.1:{port}", "VISREC_METRICS_PORT": "0",
           "VISREC_MILVUS_URI": str(db), "VISREC_TRITON_URL": "127.0.0.1:1"}
    proc = subprocess.Popen([str(venv / "bin/visrec-gateway")], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            check = subprocess.run([str(venv / "bin/visrec-healthcheck"), "--address",
                                    f"127.0.0.1:{port}"], capture_output=True, text=True,
                                   timeout=30, check=False)
            if check.returncode == 0:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, check.stdout + check.stderr
            time.sleep(0.5)
        assert check.stdout.strip() == "SERVING"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.RecommenderStub(channel).SimilarItems(
                pb.SimilarItemsRequest(item_id="item-0", k=3), timeout=30)
        assert reply.items[0].item.id == "item-4" and reply.model_version == "1"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, "the gateway did not shut down cleanly on SIGTERM"
