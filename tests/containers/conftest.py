"""Real containers, with podman: the project's images built once per session (visrec-images), a
model repository exported by the test environment (as the export image would), and a small
catalog of the demo images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import copy_repository
from visrec.local.containers import Built, build_all, plan
from visrec.local.demo_catalog import build_catalog

VERSION = "test"  # tag of the project's images in these tests


@pytest.fixture(scope="session")
def images() -> dict[str, Built]:
    """Every image of the CPU stack and the pod specs, built (or rebuilt from podman's layer
    cache) once per session."""
    built = build_all(plan(version=VERSION), progress=False)
    return {b.tag: b for b in built}


@pytest.fixture(scope="session")
def repository_v1(exported_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's export of version 1, copied (the containers mount and roll it)."""
    return copy_repository(exported_v1, tmp_path_factory.mktemp("containers-models"))


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with catalog.jsonl and its images: the same 100 emoji drawn by each vendor."""
    source = build_catalog()
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    google = {r["unified"]: r for r in rows if r["vendor"] == "google"}
    pairs = [u for u in sorted(google) if any(r["unified"] == u and r["vendor"] == "twitter"
                                              for r in rows)][:100]
    chosen = [r for r in rows if r["unified"] in set(pairs)]
    out = tmp_path_factory.mktemp("containers-catalog")
    for row in chosen:
        target = out / row["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.parent / row["image"], target)
    (out / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    # Readable by the containers' users (the jobs run as uid 10001).
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out
