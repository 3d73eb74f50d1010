"""visrec-stack: the production compose stack, for real, on a machine with podman and no GPU.

docker-compose.prod.yml + docker-compose.cpu.yml (Triton on CPU) + deploy/podman/
standins.compose.yml (upstream images replaced by local stand-ins), run by podman-compose with the
project's containers.conf. Podman 4.3 runs no health checks by itself and podman-compose ignores
``depends_on: condition: service_healthy``, so services come up one at a time in dependency
order, and each is waited for by running its own compose health check (``podman healthcheck
run``) until it passes: the same checks, the same order compose would use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visrec.local.containers import LOCAL_REGISTRY, ROOT, ContainerError, Podman

COMPOSE_FILES = (ROOT / "docker-compose.prod.yml", ROOT / "docker-compose.cpu.yml",
                 ROOT / "deploy" / "podman" / "standins.compose.yml")
# Long-running services, each healthy before the next starts (compose's depends_on order).
SERVICES = ("milvus", "triton", "alert-webhook", "alertmanager", "prometheus", "gateway")
# Host ports the stack publishes, by variable (docker-compose.prod.yml's defaults).
PORTS = {
    "VISREC_GATEWAY_PORT": 50051, "VISREC_GATEWAY_METRICS_PORT": 9464,
    "VISREC_TRITON_HTTP_PORT": 8000, "VISREC_TRITON_GRPC_PORT": 8001,
    "VISREC_TRITON_METRICS_PORT": 8002, "VISREC_MILVUS_PORT": 19530,
    "VISREC_MILVUS_METRICS_PORT": 9091, "VISREC_PROMETHEUS_PORT": 9090,
    "VISREC_ALERTMANAGER_PORT": 9093,
}


@dataclass
class ComposeStack:
    """One compose project: ``env`` carries the VISREC_* variables the compose files read
    (ports, image registry and version, the catalog and secrets folders)."""

    project: str
    env: Mapping[str, str]
    files: Sequence[Path] = COMPOSE_FILES
    podman: Podman = field(default_factory=Podman)
    healthy_after: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, check: bool = True, timeout: float = 600,
                profiles: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        tool = shutil.which("podman-compose") or str(Path(sys.executable).parent /
                                                     "podman-compose")
        cmd = [tool, "-p", self.project, *(a for f in self.files for a in ("-f", str(f))),
               *(a for p in profiles for a in ("--profile", p)), *args]
        proc = subprocess.run(cmd, env={**self.podman.env, **self.env}, cwd=ROOT, text=True,
                              capture_output=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ContainerError(f"podman-compose {' '.join(args)} failed ({proc.returncode}):"
                                 f"\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc

    def container(self, service: str) -> str:
        out = self.podman("ps", "-a", "--format", "{{.Names}}",
                          "--filter", f"label=com.docker.compose.project={self.project}",
                          "--filter", f"label=com.docker.compose.service={service}").stdout
        names = out.split()
        if not names:
            raise ContainerError(f"no container for service {service} in {self.project}")
        return names[0]

    def inspect(self, service: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(
            self.podman("inspect", self.container(service)).stdout)
        return data[0]

    def wait_healthy(self, service: str, timeout: float = 300) -> float:
        """Seconds until ``service`` passes its health check (or, without one, runs)."""
        start = time.monotonic()
        name = self.container(service)
        has_check = bool((self.inspect(service).get("Config") or {}).get("Healthcheck"))
        while True:
            state = self.inspect(service)["State"]
            if state.get("Status") == "exited":
                raise ContainerError(f"{service} exited ({state.get('ExitCode')}):\n"
                                     f"{self.logs(service)}")
            if has_check:
                if self.podman("healthcheck", "run", name, check=False).returncode == 0:
                    break
            elif state.get("Running"):
                break
            if time.monotonic() - start > timeout:
                raise ContainerError(f"{service} not healthy after {timeout:.0f}s:\n"
                                     f"{self.logs(service)}")
            time.sleep(1)
        self.healthy_after[service] = time.monotonic() - start
        return self.healthy_after[service]

    def up(self, *services: str, timeout: float = 300) -> None:
        """Start each service (without its dependencies) and wait until it is healthy."""
        for service in services:
            self.compose("up", "-d", "--no-deps", service)
            self.wait_healthy(service, timeout)

    def run(self, service: str, *command: str,
            timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """A one-shot job (ingest, rollout) on the stack's network and volumes."""
        return self.compose("run", "--rm", "--no-deps", service, *command, timeout=timeout,
                            profiles=("tools",))

    def logs(self, service: str, tail: int = 40) -> str:
        proc = self.podman("logs", "--tail", str(tail), self.container(service), check=False)
        return (proc.stdout + proc.stderr)[-4000:]

    def stop(self) -> None:
        """Stop and remove the containers; volumes (the stack's state) stay."""
        self.compose("down", check=False, timeout=300)

    def destroy(self) -> None:
        self.compose("down", "-v", check=False, timeout=300)
        self.podman("volume", "prune", "-f", "--filter",
                    f"label=com.docker.compose.project={self.project}", check=False)

    def volume(self, name: str) -> str:
        return f"{self.project}_{name}"


def stack_env(*, registry: str = LOCAL_REGISTRY, version: str = "dev",
              ports: Mapping[str, int] | None = None, catalog_dir: Path | None = None,
              secrets_dir: Path | None = None) -> dict[str, str]:
    env = {"VISREC_REGISTRY": registry, "VISREC_VERSION": version}
    env.update({k: str(v) for k, v in {**PORTS, **(ports or {})}.items()})
    if catalog_dir is not None:
        env["VISREC_CATALOG_DIR"] = str(catalog_dir.resolve())
    if secrets_dir is not None:
        env["VISREC_SECRETS_DIR"] = str(secrets_dir.resolve())
    return env


def fill_models(stack: ComposeStack, repository: Path, image: str) -> None:
    """Copy a model repository (written by visrec-export) into the stack's models volume as
    the export job leaves it: owned by the export image's user (10001), readable by all."""
    if stack.podman("volume", "exists", stack.volume("models"), check=False).returncode != 0:
        stack.podman("volume", "create", "--label",
                     f"com.docker.compose.project={stack.project}", stack.volume("models"))
    stack.podman("run", "--rm", "--user", "0:0", "-v", f"{stack.volume('models')}:/models",
                 "-v", f"{repository.resolve()}:/src:ro", image, "sh", "-c",
                 "cp -r /src/. /models/ && chown -R 10001:10001 /models && chmod -R a+rX /models")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-stack", description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("action", choices=["up", "down", "destroy", "ps"],
                   help="up: every service, healthy in order; down: stop (volumes stay); "
                        "destroy: stop and delete the volumes")
    p.add_argument("--project", default="visrec-local")
    p.add_argument("--version", default="dev", help="tag of the images (visrec-images)")
    p.add_argument("--catalog-dir", type=Path, default=ROOT / "data" / "catalog",
                   help="folder with catalog.jsonl for `podman-compose run ingest`")
    p.add_argument("--secrets-dir", type=Path, default=ROOT / "secrets")
    args = p.parse_args(argv)
    try:
        stack = ComposeStack(args.project, stack_env(
            version=args.version, catalog_dir=args.catalog_dir, secrets_dir=args.secrets_dir))
        if args.action == "up":
            stack.up(*SERVICES)
            for service, seconds in stack.healthy_after.items():
                print(f"{service:<14} healthy after {seconds:5.1f}s")
        elif args.action == "down":
            stack.stop()
        elif args.action == "destroy":
            stack.destroy()
        else:
            print(stack.compose("ps").stdout)
    except ContainerError as e:
        print(f"visrec-stack: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
