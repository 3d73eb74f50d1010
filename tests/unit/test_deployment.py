"""Kubernetes manifests, docker-compose.prod.yml, Dockerfiles and GitHub workflows, validated
offline (no cluster or container engine runs here) and checked for their production
properties."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
    kubectl = shutil.which("kubectl")
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
    skipped = []
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            skipped.append(doc["kind"])
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert all(d["metadata"].get("namespace", "").startswith("visrec")
               for d in docs if d["kind"] != "Namespace")
    assert set(skipped) <= CUSTOM_KINDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_probes_and_runs_as_non_root(overlay):
    for where, spec in pod_specs(RENDERED[overlay]):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in spec["containers"]:
            at = f"{overlay} {where} container {c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{at} {kind}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert sc["capabilities"]["drop"] == ["ALL"], at
            assert sc.get("runAsUser", spec["securityContext"].get("runAsUser", 0)) != 0, at
            if where.startswith("Deployment"):
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
    assert "gpu-tensorrt" in export["args"]
    cpu_export = one(RENDERED["cpu"], "Job", "export")["spec"]["template"]["spec"]
    assert cpu_export["containers"][0]["args"][:2] == ["--target", "cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_serves_with_explicit_model_control_shm_and_a_headless_service(overlay):
    docs = RENDERED[overlay]
    spec = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert "--model-control-mode=explicit" in c["args"]
    assert "--load-model=image_embedding" in c["args"]
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == "model-repository"
    assert one(docs, "Service", "triton")["spec"]["clusterIP"] == "None"
    gateway_env = one_configmap(docs, "gateway-config")
    assert gateway_env["VISREC_TRITON_URL"].startswith("dns:///triton:")


def one_configmap(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    maps = [d for d in of_kind(docs, "ConfigMap")
            if re.fullmatch(rf"{prefix}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(maps) == 1, prefix
    return maps[0]["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_is_highly_available(overlay):
    docs = RENDERED[overlay]
    dep = one(docs, "Deployment", "gateway")
    assert dep["spec"]["replicas"] >= 3
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["readinessProbe"]["grpc"]["port"] == 50051
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    assert {t["topologyKey"] for t in spec["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    pdb = one(docs, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
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


def test_only_the_gateway_and_jobs_reach_triton_and_milvus():
    docs = RENDERED["gpu"]
    for name in ("triton-ingress", "milvus-ingress"):
        policy = one(docs, "NetworkPolicy", name)["spec"]
        for rule in policy["ingress"]:
            for peer in rule["from"]:
                if "podSelector" in peer and "matchExpressions" in peer["podSelector"]:
                    allowed = peer["podSelector"]["matchExpressions"][0]["values"]
                    assert set(allowed) == {"visrec-gateway", "visrec-reindex"}
                elif "namespaceSelector" in peer:
                    assert peer["namespaceSelector"]["matchLabels"] == {
                        "kubernetes.io/metadata.name": "monitoring"}
                    assert {p["port"] for p in rule["ports"]} <= {8002, 9091}


def test_service_monitors_scrape_ports_that_exist():
    docs = RENDERED["gpu"]
    services = of_kind(docs, "Service")
    for sm in of_kind(docs, "ServiceMonitor"):
        selector = sm["spec"]["selector"]["matchLabels"]
        matching = [s for s in services
                    if selector.items() <= s["metadata"].get("labels", {}).items()]
        if sm["metadata"]["name"] == "visrec-milvus":
            assert not matching  # the Milvus Operator creates that Service
            continue
        ports = {p["name"] for s in matching for p in s["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["port"] in ports, (sm["metadata"]["name"], endpoint, ports)
    dashboards = one(docs, "ConfigMap", "visrec-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {f.name for f in
                                       (ROOT / "monitoring/grafana/dashboards").glob("*.json")}


def test_prometheusrule_is_generated_from_the_rule_files():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_prometheusrule.py"),
                           "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rule = one(RENDERED["gpu"], "PrometheusRule", "visrec")
    source = yaml.safe_load((ROOT / "monitoring/prometheus/rules/visrec.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_bump_images_sets_registry_and_tag(tmp_path):
    from scripts.bump_images import bump

    text = (ROOT / "k8s/base/kustomization.yaml").read_text()
    bumped = yaml.safe_load(bump(text, "ghcr.io/acme", "1.2.3"))
    assert {(i["name"], i["newName"], i["newTag"]) for i in bumped["images"]} == {
        (f"visrec-{n}", f"ghcr.io/acme/visrec-{n}", "1.2.3")
        for n in ("gateway", "triton", "export")}


# -------------------------------------------------------------------- docker compose
COMPOSE = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())
SERVICES = COMPOSE["services"]


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
    assert triton["healthcheck"]["test"][-1].endswith("/v2/health/ready")
    for name, svc in SERVICES.items():
        if "tools" in svc.get("profiles", []):
            assert svc["restart"] == "no", name
            continue
        assert svc["restart"] == "unless-stopped", name
        assert "healthcheck" in svc, f"{name} has no health check"
        assert svc["logging"]["options"]["max-size"], name
        assert svc["deploy"]["resources"]["limits"]["memory"], name
    for name in ("gateway", "triton", "prometheus", "grafana"):
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
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: {image}"


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
    assert "COPY --from=builder" in runtime


def test_gateway_and_triton_images_have_health_checks():
    assert "HEALTHCHECK" in (ROOT / "docker/gateway.Dockerfile").read_text()
    assert "/v2/health/ready" in (ROOT / "docker/triton.Dockerfile").read_text()
    assert "tritonserver:24.10-py3" in (ROOT / "docker/triton.Dockerfile").read_text()


@pytest.mark.parametrize("path", sorted((ROOT / ".github/workflows").glob("*.yml")),
                         ids=lambda p: p.name)
def test_workflows_validate_against_the_github_schema(path):
    binary = Path(shutil.which("check-jsonschema") or ROOT / ".venv/bin/check-jsonschema")
    proc = subprocess.run([str(binary), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command_and_cd_gates_production():
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    steps = [s.get("run", "") for s in ci["jobs"]["test"]["steps"]]
    assert any(s.startswith("./scripts/test") for s in steps)
    cd = yaml.safe_load((ROOT / ".github/workflows/cd.yml").read_text())
    uses = [s.get("uses", "") for s in cd["jobs"]["images"]["steps"]]
    assert any(u.startswith("docker/build-push-action@") for u in uses)
    assert cd["jobs"]["production"]["environment"]["name"] == "production"
    assert cd["jobs"]["production"]["needs"] == ["images", "staging"]
    bench = yaml.safe_load((ROOT / ".github/workflows/bench.yml").read_text())
    assert "gpu" in bench["jobs"]["gpu"]["runs-on"]
    runs = [s["run"].split()[0] for s in bench["jobs"]["gpu"]["steps"] if "run" in s]
    assert "bench/gpu.sh" in runs and os.access(ROOT / "bench/gpu.sh", os.X_OK)
