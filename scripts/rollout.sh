#!/usr/bin/env bash
# Roll model version M out on a cluster (or back): a Job made from the overlay by
# scripts/rollout_job.py runs visrec-rollout against every Triton pod and Milvus, and this waits
# for it and prints its timeline. Flags after the version are visrec-rollout's, passed through:
#   scripts/rollout.sh k8s/overlays/gpu visrec 2 --catalog /catalog/catalog.jsonl
set -euo pipefail
overlay=${1:?overlay}; namespace=${2:?namespace}; version=${3:?model version}; shift 3
name="rollout-v${version}-$(date +%s)"
python3 "$(dirname "$0")/rollout_job.py" --overlay "$overlay" --to "$version" --name "$name" "$@" \
  | kubectl apply -f -
if kubectl -n "$namespace" wait --for=condition=complete "job/$name" --timeout=120m; then
  kubectl -n "$namespace" logs "job/$name"
else
  kubectl -n "$namespace" logs "job/$name" || true
  echo "rollout.sh: $name did not complete: version $version is not served (see above)" >&2
  exit 1
fi
