"""visrec-images: build the project's images with podman, on machines without Docker or a
reachable image registry.

Podman runs with the project's containers.conf (deploy/podman/containers.conf, through
CONTAINERS_CONF), so the machine's configuration is left alone. Upstream base images cannot be
pulled here, so they are bootstrapped: a Debian 12 root filesystem from Debian's packages
(mmdebstrap), imported as an image, and stand-ins built on it for python:3.11-slim-bookworm,
Milvus, Prometheus and Alertmanager (docker/standins/). The project's own Dockerfiles then build
unchanged, with their base image passed as a build argument. Builds reuse podman's layer cache
(an unchanged image builds in seconds); the Debian root filesystem is made once and kept.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STANDIN = "localhost/visrec-standin"
DEBIAN = f"{STANDIN}/debian:bookworm"
PYTHON = f"{STANDIN}/python:3.11-slim-bookworm"
LOCAL_REGISTRY = "localhost/visrec"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    pass


class Podman:
    """The podman CLI with the project's configuration."""

    def __init__(self, conf: Path = CONTAINERS_CONF) -> None:
        if shutil.which("podman") is None:
            raise ContainerError("podman is not installed (scripts/setup installs it)")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf.resolve())}

    def __call__(self, *args: str, check: bool = True, timeout: float = 1800,
                 capture: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["podman", *args], env=self.env, text=True, timeout=timeout,
                              capture_output=capture, check=False)
        if check and proc.returncode != 0:
            detail = (proc.stderr or "")[-3000:] if capture else ""
            raise ContainerError(f"podman {' '.join(args[:3])}... failed "
                                 f"({proc.returncode}): {detail}")
        return proc

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def size_mb(self, image: str) -> float:
        out = self("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
        return int(out) / 1e6


@dataclass(frozen=True)
class Image:
    """One image: a Dockerfile, its build arguments and the images it is built on."""

    tag: str
    dockerfile: str
    args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    context: str = "."
    needs: tuple[str, ...] = ()


def plan(registry: str = LOCAL_REGISTRY, version: str = "dev", *,
         full_export: bool = False) -> list[Image]:
    """Every image the CPU stack and the pod specs need, in build order. ``full_export`` adds
    the export image with torch (~5 GB; the stack only needs its torch-free jobs variant)."""
    python = {"PYTHON_IMAGE": PYTHON}
    images = [
        Image(PYTHON, "docker/standins/python.Dockerfile", {"BASE_IMAGE": DEBIAN},
              context="docker/standins", needs=(DEBIAN,)),
        Image(f"{STANDIN}/milvus:2.3.5", "docker/standins/milvus.Dockerfile", python,
              needs=(PYTHON,)),
        Image(f"{STANDIN}/prometheus:debian", "docker/standins/prometheus.Dockerfile",
              {"BASE_IMAGE": DEBIAN}, target="prometheus", context="docker/standins",
              needs=(DEBIAN,)),
        Image(f"{STANDIN}/alertmanager:debian", "docker/standins/prometheus.Dockerfile",
              {"BASE_IMAGE": DEBIAN}, target="alertmanager", context="docker/standins",
              needs=(DEBIAN,)),
        Image(f"{registry}/visrec-gateway:{version}", "docker/gateway.Dockerfile", python,
              needs=(PYTHON,)),
        Image(f"{registry}/visrec-triton-cpu:{version}", "docker/triton-cpu.Dockerfile", python,
              needs=(PYTHON,)),
        Image(f"{registry}/visrec-export:{version}-cpu", "docker/export.Dockerfile",
              {**python, "EXTRAS": "export" if full_export else "jobs"}, needs=(PYTHON,)),
    ]
    return images


def build_debian_base(podman: Podman, tag: str = DEBIAN) -> None:
    """Debian 12 from Debian's packages (mmdebstrap), imported as an image with PATH and CMD
    set (a plain import has neither)."""
    if shutil.which("mmdebstrap") is None:
        raise ContainerError("mmdebstrap is not installed (scripts/setup installs it)")
    with tempfile.TemporaryDirectory(prefix="visrec-rootfs-") as tmp:
        tarball = Path(tmp) / "bookworm.tar"
        proc = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--include=python3,ca-certificates",
             "bookworm", str(tarball)], capture_output=True, text=True, timeout=1800,
            check=False)
        if proc.returncode != 0:
            raise ContainerError(f"mmdebstrap failed: {proc.stderr[-2000:]}")
        podman("import", "--change", f"ENV PATH={PATH_ENV}", "--change", "ENV LANG=C.UTF-8",
               "--change", 'CMD ["python3"]', str(tarball), tag)


def build(podman: Podman, image: Image) -> None:
    args = ["build", "--format", "docker", "--network", "host", "--layers", "-q",
            "-f", str(ROOT / image.dockerfile), "-t", image.tag]
    if CA_BUNDLE.is_file():  # pip and apt inside builds verify TLS with the host's CAs
        args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    for key, value in image.args.items():
        args += ["--build-arg", f"{key}={value}"]
    if image.target:
        args += ["--target", image.target]
    podman(*args, str(ROOT / image.context), timeout=3600)


@dataclass
class Built:
    tag: str
    seconds: float
    size_mb: float
    reused: bool


def build_all(images: Sequence[Image], *, rebuild: bool = False, podman: Podman | None = None,
              progress: bool = True) -> list[Built]:
    podman = podman or Podman()
    out: list[Built] = []

    def step(tag: str, make: object, keep: bool = False) -> None:
        reused = keep and podman.exists(tag) and not rebuild
        start = time.perf_counter()
        if not reused:
            if progress:
                print(f"visrec-images: building {tag}", file=sys.stderr, flush=True)
            make()  # type: ignore[operator]
        out.append(Built(tag, time.perf_counter() - start, podman.size_mb(tag), reused))

    if any(DEBIAN in image.needs for image in images):
        step(DEBIAN, lambda: build_debian_base(podman), keep=True)
    for image in images:
        step(image.tag, lambda image=image: build(podman, image))
    return out


def render(built: Sequence[Built]) -> str:
    rows = [f"{'image':<58} {'MB':>7} {'build s':>8}"]
    rows += [f"{b.tag:<58} {b.size_mb:>7.0f} {'(kept)' if b.reused else f'{b.seconds:.0f}':>8}"
             for b in built]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-images", description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--registry", default=LOCAL_REGISTRY, help="name prefix of the images")
    p.add_argument("--version", default="dev", help="tag of the project's images")
    p.add_argument("--full-export", action="store_true",
                   help="build the export image with torch (~5 GB, minutes) instead of its "
                        "torch-free jobs variant")
    p.add_argument("--rebuild", action="store_true",
                   help="also make the Debian root filesystem again")
    args = p.parse_args(argv)
    try:
        built = build_all(plan(args.registry, args.version, full_export=args.full_export),
                          rebuild=args.rebuild)
    except ContainerError as e:
        print(f"visrec-images: error: {e}", file=sys.stderr)
        return 1
    print(render(built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
