#!/usr/bin/env bash
# A throwaway pod in the namespace asks the gateway's gRPC health: the namespace admits only
# pods that meet Pod Security "restricted" for visrec's own workloads, so the pod says so.
#   scripts/smoke.sh visrec ghcr.io/visrec/visrec-gateway:1.2.3
set -euo pipefail
namespace=${1:?namespace}; image=${2:?gateway image}
overrides='{"apiVersion": "v1", "spec": {
  "automountServiceAccountToken": false,
  "imagePullSecrets": [{"name": "ghcr-pull"}],
  "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001,
                      "seccompProfile": {"type": "RuntimeDefault"}},
  "containers": [{"name": "smoke", "image": "'"$image"'",
    "command": ["python", "-m", "visrec.gateway.api.healthcheck", "--address",
                "gateway:50051", "--service", "visrec.v1.Recommender"],
    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                  "limits": {"cpu": "200m", "memory": "128Mi"}}}]}}'
kubectl -n "$namespace" run "smoke-${GITHUB_RUN_ID:-$$}" --rm -i --restart=Never \
  --image="$image" --overrides="$overrides"
