"""Triton readiness for container health checks and probes (stdlib only: the Triton images do
not install visrec). Ready means the server is ready and serves image_embedding."""

import sys
import urllib.error
import urllib.request

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"


def ok(path: str) -> bool:
    try:
        with urllib.request.urlopen(BASE + path, timeout=3) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


sys.exit(0 if ok("/v2/health/ready") and ok("/v2/models/image_embedding/ready") else 1)
