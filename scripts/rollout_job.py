"""Print the Kubernetes Job that rolls model version M out on a cluster (what scripts/rollout.sh
applies, by hand or from the `rollout` workflow).

The Job is made from the rendered overlay's reindex Job, so it has the same image (the ML
service's), configuration (the gateway's ConfigMap: Milvus and Triton addresses), pull secret
and security context; on top: the model repository mounted read-write (the served set is
written into its configs), the Triton admin key from Secret triton-admin-key, every Triton pod
found through the headless Service, and the name the NetworkPolicies admit (visrec-rollout).
It needs no Kubernetes API access (no ServiceAccount token, so no RBAC): replicas are found
through DNS.

Every flag this script does not own (--overlay, --name) is visrec-rollout's: it is validated by
visrec-rollout's own parser and passed through unchanged, so both cannot drift apart. The catalog
PVC is mounted at /catalog:

    python scripts/rollout_job.py --overlay k8s/overlays/gpu --to 2 \
        --catalog /catalog/catalog.jsonl | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def render(overlay: Path) -> list[dict[str, Any]]:
    pinned = Path(sys.executable).parent / "kubectl"
    kubectl = str(pinned) if pinned.exists() else shutil.which("kubectl") or "kubectl"
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rollout_job(docs: list[dict[str, Any]], rollout_args: list[str],
                name: str | None = None) -> dict[str, Any]:
    """The Job running ``visrec-rollout <rollout_args>`` (checked by visrec-rollout's parser)."""
    from visrec.export.errors import UsageError
    from visrec.export.indexing.rollout import JOB as ROLLOUT

    parsed = ROLLOUT.parse(rollout_args)
    if parsed.status:
        raise UsageError("a Job rolls a version out: --status is for a shell")
    version = parsed.to_version
    [reindex] = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "reindex"]
    job = copy.deepcopy(reindex)
    labels = {"app.kubernetes.io/name": "visrec-rollout", "app.kubernetes.io/component":
              "rollout", "app.kubernetes.io/part-of": "visrec"}
    job["metadata"] = {"name": name or f"rollout-v{version}-{int(time.time())}",
                       "namespace": reindex["metadata"]["namespace"], "labels": labels}
    spec = job["spec"]
    spec["backoffLimit"] = 0  # a failed rollout leaves N serving; a human decides what next
    spec["template"]["metadata"]["labels"] = dict(labels)
    pod = spec["template"]["spec"]
    pod["restartPolicy"] = "Never"
    [container] = pod["containers"]
    container["name"] = "rollout"
    container["command"] = ["visrec-rollout"]
    container["args"] = list(rollout_args)
    container["env"] = [
        # Every Triton pod: the headless Service resolves to each ready pod's address.
        {"name": "VISREC_TRITON_REPLICAS", "value": "triton:8001"},
        {"name": "VISREC_MODEL_REPOSITORY", "value": "/models"},
        {"name": "VISREC_TRITON_ADMIN_KEY", "valueFrom": {
            "secretKeyRef": {"name": "triton-admin-key", "key": "key"}}},
    ]
    container["volumeMounts"] = [*container["volumeMounts"], {"name": "models",
                                                              "mountPath": "/models"}]
    pod["volumes"] = [*pod["volumes"], {"name": "models", "persistentVolumeClaim": {
        "claimName": "model-repository"}}]
    return job


def main(argv: list[str] | None = None) -> int:
    from visrec.export.errors import UsageError

    p = argparse.ArgumentParser(
        prog="rollout_job", description=(__doc__ or "").split("\n\n")[0],
        epilog="Other flags are visrec-rollout's (see visrec-rollout --help), e.g. --to 2 "
               "--catalog /catalog/catalog.jsonl --grace-s 60.")
    p.add_argument("--overlay", type=Path, default=ROOT / "k8s" / "overlays" / "gpu",
                   help="the kustomize overlay whose reindex Job is the template")
    p.add_argument("--name", default=None, help="Job name (default: rollout-v<M>-<time>)")
    args, rollout_args = p.parse_known_args(argv)
    try:
        job = rollout_job(render(args.overlay), rollout_args, name=args.name)
    except UsageError as e:
        p.error(f"visrec-rollout flags: {e}")
    print(yaml.safe_dump(job, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
