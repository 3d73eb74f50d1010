"""The tree says where things live, and the imports keep it so: the two services meet only in
the shared package (``visrec.platform``: neither imports the other), the serving core imports no
client library, no module or class grows past its budget, and docs/layout.md lists every
module."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = {"gateway": "visrec.gateway", "export": "visrec.export", "local": "visrec.local",
            "visrec/platform": "visrec.platform"}
# What the serving core may import of the shared package: its pure modules, no adapter.
PURE_PLATFORM = ("visrec.platform.domain", "visrec.platform.errors", "visrec.platform.catalog",
                 "visrec.platform.ports", "visrec.platform.retrieval",
                 "visrec.platform.deadlines")
CLIENT_LIBRARIES = ("grpc", "grpc_health", "grpc_reflection", "pymilvus", "milvus_lite",
                    "tritonclient", "prometheus_client", "google.protobuf")
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def modules(folder: str = "") -> Iterator[Path]:
    roots = [ROOT / folder] if folder else [ROOT / f for f in PACKAGES]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if "_pb" not in path.parts:
                yield path


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    folder = next(f for f in PACKAGES if rel.is_relative_to(f))
    parts = [PACKAGES[folder], *rel.relative_to(folder).parts]
    return ".".join(p for p in parts if p != "__init__")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_layout_helpers_see_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import pymilvus\n    from grpc import aio\n")
    assert {n for n in imports(bad) if _under(n, CLIENT_LIBRARIES)} == {"pymilvus", "grpc"}


@pytest.mark.parametrize("path", list(modules("gateway/core")), ids=lambda p: p.name)
def test_the_serving_core_imports_no_client_library(path):
    bad = {n for n in imports(path) if _under(n, CLIENT_LIBRARIES)
           or _under(n, ("visrec.gateway.api",))
           or (_under(n, ("visrec.platform",)) and not _under(n, PURE_PLATFORM))}
    assert not bad, f"{module_name(path)} is pure core code but imports {sorted(bad)}"


@pytest.mark.parametrize("path", list(modules("gateway")), ids=module_name)
def test_the_recommendation_service_stands_alone(path):
    """Only gateway/ and the shared package go into the gateway image: it may not import the
    ML service, the local tooling, or anything that needs torch."""
    bad = {n for n in imports(path)
           if _under(n, ("visrec.export", "visrec.local", "torch", "timm", "onnx"))}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", list(modules("export")), ids=module_name)
def test_the_ml_service_never_reaches_into_the_recommendation_service(path):
    """What both services need lives in visrec.platform; the jobs import none of the gateway."""
    bad = {n for n in imports(path) if _under(n, ("visrec.gateway", "visrec.local"))}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}: move what both need into " \
        "visrec.platform"


@pytest.mark.parametrize("path", list(modules("visrec/platform")), ids=module_name)
def test_the_shared_package_depends_on_neither_service(path):
    bad = {n for n in imports(path)
           if _under(n, ("visrec.gateway", "visrec.export", "visrec.local", "torch"))}
    assert not bad, f"{module_name(path)} is shared but imports {sorted(bad)}"


@pytest.mark.parametrize("path", list(modules()), ids=module_name)
def test_nothing_imports_a_service_folder_bare(path):
    bad = {n for n in imports(path) if _under(n, tuple(PACKAGES))}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}: use visrec.*"


@pytest.mark.parametrize("path", list(modules()), ids=module_name)
def test_modules_and_classes_stay_within_their_budget(path):
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module_name(path)} has {lines} lines: split it by job"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, (
                f"{module_name(path)}.{node.name} has {size} lines: split it by job")


def test_the_layout_document_lists_every_module_and_only_those():
    table = (ROOT / "docs" / "layout.md").read_text()
    listed = set(re.findall(r"`((?:gateway|export|local|visrec/platform)/[\w/]+\.py)`", table))
    present = {str(p.relative_to(ROOT)) for p in modules() if p.name != "__init__.py"}
    assert not present - listed, f"docs/layout.md misses {sorted(present - listed)}"
    assert not listed - present, f"docs/layout.md lists gone {sorted(listed - present)}"


def test_nothing_points_outside_the_repository():
    tracked = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml")
               and not {".venv", ".git", "build", "data", "artifacts", "node_modules"}
               & set(p.relative_to(ROOT).parts)]
    bad = [str(p.relative_to(ROOT)) for p in tracked if "../shared" in p.read_text()
           and p.name != "test_layout.py"]
    assert not bad, f"these point at ../shared, which a user's clone does not have: {bad}"
