"""docker-compose.prod.yml for real: the production compose file plus the CPU override plus the
local stand-ins, run with podman. Images built from the project's Dockerfiles, every service up
and healthy by its own compose health check, real gRPC calls through the published port, every
Prometheus target up, alerts routed, a restart that keeps items, interactions and the active
model version, and a model rollout run inside the stack; then everything is torn down."""

from __future__ import annotations

import json
import secrets
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from tests.containers.conftest import VERSION
from tests.support import free_port, photo
from visrec.export.cli import build_parser
from visrec.export.cli import run as run_export
from visrec.local.containers import LOCAL_REGISTRY, Built
from visrec.local.stack import PORTS, SERVICES, ComposeStack, fill_models, stack_env
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

JOBS_IMAGE = f"{LOCAL_REGISTRY}/visrec-export:{VERSION}-cpu"


@pytest.fixture
def stack(images: dict[str, Built], small_catalog: Path, tmp_path: Path
          ) -> Iterator[ComposeStack]:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)  # as README tells operators: the folder root's only
    for name in ("gateway_tokens", "triton_admin_key"):
        (secrets_dir / name).write_text(secrets.token_hex(24) + "\n")
        (secrets_dir / name).chmod(0o644)
    with (secrets_dir / "gateway_tokens").open("a") as tokens:  # the catalog editor's
        tokens.write(f"write:{secrets.token_hex(24)}\n")
    env = stack_env(version=VERSION, ports={name: free_port() for name in PORTS},
                    catalog_dir=small_catalog, secrets_dir=secrets_dir)
    s = ComposeStack(f"visrec-test-{uuid.uuid4().hex[:8]}", env)
    try:
        yield s
    finally:
        s.destroy()


def _stub(stack: ComposeStack) -> tuple[grpc.Channel, pb_grpc.RecommenderStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.env['VISREC_GATEWAY_PORT']}")
    return channel, pb_grpc.RecommenderStub(channel)


def _prometheus(stack: ComposeStack, path: str) -> dict:
    url = f"http://127.0.0.1:{stack.env['VISREC_PROMETHEUS_PORT']}/api/v1/{path}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())["data"]


def _wait(check, what: str, within_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, grpc.RpcError, KeyError):
            pass
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s:.0f}s"
        time.sleep(1)


@pytest.mark.timeout(1500)
def test_the_production_stack_runs_restarts_and_rolls_out_in_containers(
        stack, images, repository_v1, small_catalog, tmp_path, capsys):
    started = time.monotonic()
    repository = tmp_path / "models"  # this test adds version 2: its own copy
    shutil.copytree(repository_v1, repository)
    fill_models(stack, repository, JOBS_IMAGE)

    # Up in dependency order, each healthy by its own compose health check.
    stack.up(*SERVICES[:-1])
    ingest = stack.run("ingest")
    assert "200 items, 200 embedded" in ingest.stdout and "now the active index" in \
        ingest.stdout, ingest.stdout + ingest.stderr
    stack.up("gateway")
    first_healthy = dict(stack.healthy_after)

    # Containers run as their non-root users, read-only wherever the pod specs say so.
    for service, user in (("gateway", "10001:10001"), ("triton", "triton-server")):
        info = stack.inspect(service)
        assert info["Config"]["User"] == user, service
        assert info["HostConfig"]["ReadonlyRootfs"] is True, service
    assert stack.inspect("milvus")["Config"]["User"] == "milvus"

    token, writer = (Path(stack.env["VISREC_SECRETS_DIR"]) / "gateway_tokens").read_text(
        ).split()
    auth = (("authorization", f"Bearer {token}"),)
    editor = (("authorization", f"Bearer {writer.removeprefix('write:')}"),)
    channel, stub = _stub(stack)
    with channel:
        with pytest.raises(grpc.RpcError) as refused:
            stub.SimilarItems(pb.SimilarItemsRequest(item_id="x", k=1), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        google = next(json.loads(line)["id"] for line in
                      (small_catalog / "catalog.jsonl").read_text().splitlines())
        twin = "twitter:" + google.split(":", 1)[1]
        similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id=google, k=5), metadata=auth,
                                    timeout=30)
        assert similar.model_version == "1" and len(similar.items) == 5
        assert twin in [i.item.id for i in similar.items]  # the other vendor's drawing
        by_photo = stub.SearchByImage(pb.SearchByImageRequest(image=photo(), k=3),
                                      metadata=auth, timeout=60)
        assert len(by_photo.items) == 3 and by_photo.model_version == "1"
        click = pb.RecordInteractionRequest(user_id="shopper-1", item_id=google,
                                            type=pb.INTERACTION_TYPE_CLICK, request_id="r-1")
        assert stub.RecordInteraction(click, metadata=auth, timeout=30).counted
        mine = stub.Recommend(pb.RecommendRequest(user_id="shopper-1", k=4, exclude_seen=True),
                              metadata=auth, timeout=30)
        assert mine.degraded == "" and google not in [i.item.id for i in mine.items]
        # Catalog changes need the write token; then the new item is found by its photo.
        added = pb.UpsertItemsRequest(item=pb.Item(id="poster-1", name="Cat poster",
                                                   category="Posters"), image=photo("chelsea"))
        with pytest.raises(grpc.RpcError) as denied:
            stub.UpsertItems(iter([added]), metadata=auth, timeout=30)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert stub.UpsertItems(iter([added]), metadata=editor, timeout=60).upserted == 1
        found = stub.SearchByImage(pb.SearchByImageRequest(image=photo("chelsea"), k=1),
                                   metadata=auth, timeout=60)
        assert found.items[0].item.id == "poster-1"

    # Prometheus found every target by DNS and scrapes them; alerts reach Alertmanager, which
    # routes them to the receiver.
    def all_up() -> list[dict] | None:
        active = _prometheus(stack, "targets")["activeTargets"]
        return active if len(active) == 3 and all(t["health"] == "up" for t in active) else None

    targets = _wait(all_up, "every target up", 90)
    assert {t["labels"]["job"] for t in targets} == {"visrec-gateway", "triton", "milvus"}
    assert _prometheus(stack, "alertmanagers")["activeAlertmanagers"]
    alert = json.dumps([{"labels": {"alertname": "VisrecContainerTest", "severity": "ticket"},
                         "annotations": {"summary": "routing check"}}]).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.env['VISREC_ALERTMANAGER_PORT']}/api/v2/alerts", data=alert,
        headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    _wait(lambda: "VisrecContainerTest" in stack.logs("alert-webhook"),
          "the alert reaching the webhook receiver", 90)

    # Only the rollout may change what Triton serves: its repository API wants the admin key.
    refused = urllib.request.Request(
        f"http://127.0.0.1:{stack.env['VISREC_TRITON_HTTP_PORT']}/v2/repository/models/"
        "image_embedding/unload", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        urllib.request.urlopen(refused, timeout=10)
    assert forbidden.value.code in (401, 403)

    # A restart of the whole stack keeps the catalog, the interactions and the active version.
    stack.stop()
    stack.healthy_after.clear()
    stack.up(*SERVICES)
    restarted_healthy = dict(stack.healthy_after)
    channel, stub = _stub(stack)
    with channel:
        again = stub.RecordInteraction(click, metadata=auth, timeout=30)
        assert not again.counted  # the retry is recognised: the interaction survived
        mine = stub.Recommend(pb.RecommendRequest(user_id="shopper-1", k=4), metadata=auth,
                              timeout=30)
        assert mine.degraded == "" and mine.model_version == "1"

        # A rollout inside the stack: version 2 exported by the test environment into the
        # models volume (as the export job would), then visrec-rollout in the jobs image.
        head = tmp_path / "head.pt"
        torch.manual_seed(7)
        q, _ = torch.linalg.qr(torch.randn(1280, 256))
        torch.save({"weight": q.T.contiguous()}, head)
        assert run_export(build_parser().parse_args(
            ["--target", "cpu", "--quiet", "--repository", str(repository),
             "--head", str(head)])) == 2
        fill_models(stack, repository, JOBS_IMAGE)
        rollout = stack.run("rollout", "visrec-rollout", "--to", "2", "--catalog",
                            "/catalog/catalog.jsonl", "--grace-s", "3", "-q")
        assert "active index -> items_v2" in rollout.stdout, rollout.stdout + rollout.stderr
        switched = _wait(lambda: stub.SimilarItems(
            pb.SimilarItemsRequest(item_id=google, k=3), metadata=auth, timeout=30
        ).model_version == "2", "the gateway following the switch", 30)
        assert switched
        v2 = stub.SearchByImage(pb.SearchByImageRequest(image=photo(), k=3), metadata=auth,
                                timeout=60)
        assert v2.model_version == "2" and len(v2.items) == 3
        assert v2.items[0].item.id == "poster-1"  # the online upsert survived the rollout
        carried = stub.Recommend(pb.RecommendRequest(user_id="shopper-1", k=4),
                                 metadata=auth, timeout=30)
        assert carried.degraded == "" and carried.model_version == "2"  # profile carried over

    with capsys.disabled():
        print("\nimages:", {tag.split("/")[-1]: f"{b.size_mb:.0f} MB" for tag, b in
                            images.items()})
        print("healthy after (s), first start:",
              {k: round(v, 1) for k, v in first_healthy.items()})
        print("healthy after (s), restart:",
              {k: round(v, 1) for k, v in restarted_healthy.items()})
        print(f"whole test: {time.monotonic() - started:.0f}s\n" + rollout.stdout[-900:])
