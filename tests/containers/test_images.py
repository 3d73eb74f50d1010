"""The images carry the code of this checkout, not a layer cached from an older one.

Found the hard way: the runtime stages installed their wheels from a bind mount, which is not
part of buildah's layer cache key, so an image rebuilt after a code change kept the old code and
the compose stack ran last week's ingest against this week's Triton."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.containers.conftest import VERSION
from visrec.local.containers import LOCAL_REGISTRY, Podman

ROOT = Path(__file__).resolve().parents[2]
DIGESTS = """
import hashlib, json, pathlib, sys
import visrec
base = pathlib.Path(visrec.__file__).parent
print(json.dumps({str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(base.rglob("*.py")) if "_pb" not in p.parts}))
"""


def checkout(*packages: str) -> dict[str, str]:
    """Every module of the named ``visrec`` subpackages in this checkout, by its path inside
    the package (``gateway/api/server.py``, ``platform/ports.py``), and the namespace's own
    ``__init__.py``."""
    base = ROOT / "visrec"
    files = [base / "__init__.py", *(p for package in packages
                                     for p in sorted((base / package).rglob("*.py")))]
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if "_pb" not in p.parts and "__pycache__" not in p.parts}


@pytest.mark.parametrize("image, packages", [
    # the recommendation service and what it shares with the jobs; no job-only module
    (f"{LOCAL_REGISTRY}/visrec-gateway:{VERSION}", ("gateway", "platform")),
    (f"{LOCAL_REGISTRY}/visrec-export:{VERSION}-cpu", ("gateway", "export", "local", "platform")),
])
def test_an_image_holds_exactly_the_code_of_this_checkout(images, image, packages):
    out = Podman()("run", "--rm", "--entrypoint", "python", image, "-c", DIGESTS, timeout=120)
    inside = json.loads(out.stdout)
    assert inside == checkout(*packages)
