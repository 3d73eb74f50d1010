#!/usr/bin/env bash
# Apply an overlay and wait for it: what CD runs for staging and production, and what an
# operator runs by hand.   scripts/deploy.sh k8s/overlays/gpu visrec
# - Jobs have an immutable pod template: the export and reindex Jobs of the last release are
#   deleted first (finished Jobs only record history; their work is in the volumes).
# - Server-side apply with --force-conflicts takes ownership of the fields in the manifests;
#   replica counts of autoscaled Deployments are not in them, so the HPA / KEDA keep theirs.
set -euo pipefail
overlay=${1:?overlay folder}; namespace=${2:?namespace}
kubectl -n "$namespace" delete job export reindex --ignore-not-found --wait=true
kubectl apply --server-side --force-conflicts -k "$overlay"
kubectl -n "$namespace" wait --for=condition=complete job/export --timeout=60m
kubectl -n "$namespace" rollout status deployment/triton --timeout=20m
kubectl -n "$namespace" wait --for=condition=complete job/reindex --timeout=120m
kubectl -n "$namespace" rollout status deployment/gateway --timeout=10m
