"""Triton readiness (stdlib only: the Triton images do not install visrec). Ready means serving
every version of every model the serving path calls (``models``: image_embedding, and on a GPU
the image_encoder it calls) that the repository's configs list: the durable served set that
visrec-rollout writes (version_policy specific), checked version by version.

A listed version that is not loaded (this replica started while a rollout changed the set, or
missed its reload) is loaded here, with the admin key the replica was started with, and the
check fails this once: the replica converges to the served set instead of staying unready.

    python3 ready.py [BASE_URL]      # exit 0 when ready; REPOSITORY (default /models)
"""

import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

HEADER = "visrec-admin-key"
RUNTIME = re.compile(r'key:\s*"encoder_runtime"\s*value\s*\{\s*string_value:\s*"(\w+)"')


def models(repository: Path) -> tuple[str, ...]:
    """What the serving path calls, in load order (visrec.export.repository.serving_models)."""
    try:
        text = (repository / "image_embedding" / "config.pbtxt").read_text()
    except OSError:
        return ("preprocess", "image_encoder", "image_embedding")
    runtime = RUNTIME.search(text)
    if runtime and runtime.group(1) == "onnxruntime":
        return ("image_embedding",)
    return ("image_encoder", "image_embedding")


def listed(repository: Path, model: str) -> list[str]:
    """The versions ``model``'s config.pbtxt says to serve."""
    text = (repository / model / "config.pbtxt").read_text()
    policy = re.search(r"specific\s*\{([^}]*)\}", text)
    return re.findall(r"versions:\s*(\d+)", policy.group(1)) if policy else []


def ok(base: str, path: str, method: str = "GET", key: str = "") -> bool:
    request = urllib.request.Request(base + path, method=method, data=b"" if method == "POST"
                                     else None, headers={HEADER: key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=60 if method == "POST" else 3) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def admin_key() -> str:
    key = os.environ.get("TRITON_ADMIN_KEY", "")
    path = os.environ.get("TRITON_ADMIN_KEY_FILE", "")
    if not key and path:
        try:
            key = Path(path).read_text().strip()
        except OSError:
            key = ""
    return key


def missing(base: str, repository: Path) -> dict[str, list[str]]:
    """model -> listed versions that are not ready (all of them if the server is not)."""
    if not ok(base, "/v2/health/live"):
        return {m: ["server"] for m in models(repository)}
    out = {}
    for model in models(repository):
        versions = listed(repository, model)
        absent = [v for v in versions
                  if not ok(base, f"/v2/models/{model}/versions/{v}/ready")] or (
            [] if versions else ["none listed"])
        if absent:
            out[model] = absent
    return out


def main() -> int:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    repository = Path(os.environ.get("REPOSITORY", "/models"))
    try:
        gaps = missing(base, repository)
    except OSError as e:
        print(f"not ready: {e}", file=sys.stderr)
        return 1
    if not gaps:
        return 0
    print(f"not ready: {gaps}", file=sys.stderr)
    if all(v != ["server"] for v in gaps.values()):
        key = admin_key()
        for model in models(repository):  # in load order: reload each from its config
            ok(base, f"/v2/repository/models/{model}/load", "POST", key)
    return 1


if __name__ == "__main__":
    sys.exit(main())
