"""The Kubernetes pod specs, run: the rendered CPU overlay's Triton Deployment, reindex Job and
gateway Deployment started with `podman kube play` from their own YAML (securityContext, env
from the generated ConfigMaps, args, volumes from claims), and their probes executed against
the running containers.

No cluster can run here, so where podman 4.3.1 differs from a kubelet the spec is adapted, each
adaptation named here (docs/ENVIRONMENT.md has the details):
- Services do not exist: each workload runs as one Pod named after the Service that selects it
  (a pod's name is its DNS name on the podman network), and Milvus, which the Milvus Operator
  would run, is the Milvus stand-in container under the Operator's Service name.
- Images are the locally built ones; claims become podman volumes filled beforehand.
- Init containers are run as their own containers first (kube play 4.3.1 fails to remove a
  finished init container: "cannot remove container ... as it is running").
- emptyDir {medium: Memory} (Triton's /dev/shm) becomes a world-writable folder on the host's
  tmpfs, mounted by hostPath: podman 4.3.1 ignores the medium and mounts a root-owned folder on
  disk that uid 1000 cannot write (a kubelet makes a world-writable tmpfs). Without it, the
  runtime's 64 MB /dev/shm crashes Triton's python backend under load (lock_exception).
- The Secret triton-admin-key is a podman secret made by the test (kube play 4.3.1 cannot read
  a Secret from the YAML: "is not valid JSON"), as an operator creates it with kubectl.
- Probes are not run by podman (grpc and named ports are not supported): the test runs each.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.containers.conftest import VERSION
from tests.support import ROOT
from visrec.local.containers import LOCAL_REGISTRY, STANDIN, Podman
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

IMAGES = {"visrec-triton-cpu": f"{LOCAL_REGISTRY}/visrec-triton-cpu:{VERSION}",
          "visrec-gateway": f"{LOCAL_REGISTRY}/visrec-gateway:{VERSION}",
          "visrec-export": f"{LOCAL_REGISTRY}/visrec-export:{VERSION}-cpu"}


def rendered(overlay: str = "cpu") -> list[dict[str, Any]]:
    kubectl = Path(sys.executable).parent / "kubectl"
    proc = subprocess.run([str(kubectl), "kustomize", str(ROOT / "k8s/overlays" / overlay)],
                          capture_output=True, text=True, timeout=120, check=True)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def workload(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def image_of(rendered_image: str) -> str:
    name = rendered_image.split("/")[-1].split(":")[0]
    return IMAGES[name]


def as_pod(work: dict[str, Any], name: str, claims: dict[str, str],
           memory_dir: Path) -> dict[str, Any]:
    """The workload's pod template as a Pod (see the module docstring for each change)."""
    spec = copy.deepcopy(work["spec"]["template"]["spec"])
    spec.pop("initContainers", None)
    for v in spec["volumes"]:
        if "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]
            claim["claimName"] = claims[claim["claimName"]]
        elif v.get("emptyDir", {}).get("medium") == "Memory":
            folder = memory_dir / f"{name}-{v['name']}"
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o1777)
            del v["emptyDir"]
            v["hostPath"] = {"path": str(folder), "type": "Directory"}
    for c in spec["containers"]:
        c["image"] = image_of(c["image"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": work["spec"]["template"]["metadata"]["labels"]},
            "spec": spec}


def port_of(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def probe_passes(probe: dict[str, Any], container: dict[str, Any], ip: str,
                 podman: Podman | None = None, name: str = "") -> bool:
    """Run a Kubernetes probe (httpGet, grpc, or exec in container ``name``) against the
    container at ``ip``."""
    timeout = probe.get("timeoutSeconds", 1) + 2
    if "exec" in probe:
        assert podman is not None and name
        done = podman("exec", name, *probe["exec"]["command"], check=False, timeout=timeout)
        return done.returncode == 0
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"http://{ip}:{port_of(container, get['port'])}{get['path']}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                return 200 <= reply.status < 400
        except OSError:
            return False
    if "grpc" in probe:
        check = probe["grpc"]
        with grpc.insecure_channel(f"{ip}:{check['port']}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=check.get("service", "")),
                    timeout=timeout)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    raise AssertionError(f"probe kind not handled by this test: {probe}")


class Pods:
    """kube play on the test's own network, and the containers it makes."""

    def __init__(self, podman: Podman, network: str) -> None:
        self.podman, self.network, self.played = podman, network, []

    def play(self, docs: list[dict[str, Any]], folder: Path) -> None:
        path = folder / f"play-{len(self.played)}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.podman("kube", "play", "--network", self.network, str(path), timeout=300)
        self.played.append(path)

    def container(self, pod: str, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.podman("inspect", f"{pod}-{name}").stdout)
        return data[0]

    def ip(self, pod: str, name: str) -> str:
        networks = self.container(pod, name)["NetworkSettings"]["Networks"]
        return str(networks[self.network]["IPAddress"])

    def down(self) -> None:
        for path in reversed(self.played):
            self.podman("kube", "down", str(path), check=False)


def wait_for(check, what: str, within_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {within_s:.0f}s"
        time.sleep(1)


@pytest.fixture
def memory_dir() -> Iterator[Path]:
    """A folder on the host's tmpfs for the pods' memory-backed emptyDirs."""
    folder = Path("/dev/shm") / f"visrec-kube-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pods(images, tmp_path) -> Iterator[tuple[Pods, str]]:
    podman = Podman()
    run_id = uuid.uuid4().hex[:8]
    network = f"visrec-kube-{run_id}"
    podman("network", "create", network)
    p = Pods(podman, network)
    try:
        yield p, run_id
    finally:
        p.down()
        podman("rm", "-f", "-t", "2", f"visrec-milvus-{run_id}", check=False)
        for claim in ("model-repository", "catalog"):
            podman("volume", "rm", "-f", f"{claim}-{run_id}", check=False)
        podman("network", "rm", "-f", network, check=False)
        podman("secret", "rm", "triton-admin-key", check=False)


def fill(podman: Podman, volume: str, source: Path) -> None:
    podman("volume", "create", volume)
    podman("run", "--rm", "--user", "0:0", "-v", f"{volume}:/dst", "-v", f"{source}:/src:ro",
           IMAGES["visrec-export"], "sh", "-c",
           "cp -r /src/. /dst/ && chown -R 10001:10001 /dst && chmod -R a+rX /dst")


@pytest.mark.timeout(900)
def test_the_cpu_overlay_pod_specs_run_with_their_security_context_env_and_probes(
        pods, repository_v1, small_catalog, memory_dir, tmp_path):
    p, run_id = pods
    podman = p.podman
    docs = rendered("cpu")
    claims = {c: f"{c}-{run_id}" for c in ("model-repository", "catalog")}
    fill(podman, claims["model-repository"], repository_v1)
    fill(podman, claims["catalog"], small_catalog)
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"].startswith(("gateway-config", "ab-experiment"))]
    env = {k: v for cm in configmaps for k, v in cm["data"].items()}
    milvus_host = env["VISREC_MILVUS_URI"].split("//")[1].split(":")[0]

    # Milvus, under the name of the Service the Milvus Operator makes.
    podman("run", "-d", "--name", f"visrec-milvus-{run_id}", "--network", p.network,
           "--network-alias", milvus_host, f"{STANDIN}/milvus:2.3.5")
    wait_for(lambda: podman("healthcheck", "run", f"visrec-milvus-{run_id}",
                            check=False).returncode == 0, "Milvus healthy", 180)

    # The Secret an operator creates; then Triton: its init container first, then the pod.
    key = base64.b64encode(secrets.token_hex(16).encode()).decode()
    secret_file = tmp_path / "triton-admin-key.json"
    secret_file.write_text(json.dumps({"key": key}))
    podman("secret", "rm", "triton-admin-key", check=False)
    podman("secret", "create", "triton-admin-key", str(secret_file))
    triton = workload(docs, "Deployment", "triton")
    [init] = triton["spec"]["template"]["spec"]["initContainers"]
    waited = podman("run", "--rm", "--user", "1000:1000", "--read-only", "-v",
                    f"{claims['model-repository']}:/models:ro", "--entrypoint",
                    init["command"][0], image_of(init["image"]), *init["command"][1:])
    assert "holds every model" in waited.stdout
    p.play([as_pod(triton, "triton", claims, memory_dir)], tmp_path)
    container = triton["spec"]["template"]["spec"]["containers"][0]
    ip = p.ip("triton", "triton")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        wait_for(lambda k=kind: probe_passes(container[k], container, ip, podman,
                                             "triton-triton"), f"Triton {kind}", 180)
    # Its repository API needs the admin key: this call has none.
    refused = urllib.request.Request(f"http://{ip}:8000/v2/repository/models/preprocess/load",
                                     data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(refused, timeout=10)

    # The reindex Job's pod embeds the catalog through that Triton into Milvus.
    reindex = workload(docs, "Job", "reindex")
    job_pod = as_pod(reindex, "reindex", claims, memory_dir)
    job_pod["spec"]["restartPolicy"] = "Never"
    p.play([*configmaps, job_pod], tmp_path)
    wait_for(lambda: p.container("reindex", "reindex")["State"]["Status"] == "exited",
             "the reindex Job's pod finishing", 300)
    job = p.container("reindex", "reindex")
    logs = podman("logs", "reindex-reindex", check=False)
    assert job["State"]["ExitCode"] == 0, logs.stdout + logs.stderr
    assert "now the active index" in logs.stdout + logs.stderr

    # The gateway: ready (Milvus and Triton answer), live, and serving real calls.
    gateway = workload(docs, "Deployment", "gateway")
    p.play([*configmaps, as_pod(gateway, "gateway", claims, memory_dir)], tmp_path)
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    ip = p.ip("gateway", "gateway")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        wait_for(lambda k=kind: probe_passes(container[k], container, ip), f"gateway {kind}",
                 120)
    first = json.loads((small_catalog / "catalog.jsonl").read_text().splitlines()[0])["id"]
    with grpc.insecure_channel(f"{ip}:50051") as channel:
        reply = pb_grpc.RecommenderStub(channel).SimilarItems(
            pb.SimilarItemsRequest(item_id=first, k=3), timeout=30)
    assert reply.model_version == "1" and len(reply.items) == 3

    # What the securityContext and envFrom made of the containers.
    for pod, name, uid in (("triton", "triton", "1000:1000"), ("gateway", "gateway",
                                                                "10001:10001"),
                           ("reindex", "reindex", "10001:10001")):
        info = p.container(pod, name)
        assert info["Config"]["User"] == uid, (pod, info["Config"]["User"])
        assert info["HostConfig"]["ReadonlyRootfs"] is True, pod
        assert info["EffectiveCaps"] in (None, []), (pod, info["EffectiveCaps"])
        assert any("no-new-privileges" in o for o in info["HostConfig"]["SecurityOpt"] or []), pod
    gateway_env = dict(e.split("=", 1) for e in p.container("gateway", "gateway")["Config"]["Env"])
    assert gateway_env["VISREC_EXPERIMENT"] == env["VISREC_EXPERIMENT"]
    assert gateway_env["VISREC_MILVUS_URI"] == env["VISREC_MILVUS_URI"]
