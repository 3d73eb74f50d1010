#!/bin/sh
# Start tritonserver with its repository API (load, unload, index) restricted to callers that
# present the admin key, which only visrec-rollout holds: gateways can infer, not load.
# The key comes from TRITON_ADMIN_KEY or the file TRITON_ADMIN_KEY_FILE (a mounted secret).
set -eu
key="${TRITON_ADMIN_KEY:-}"
if [ -z "$key" ] && [ -n "${TRITON_ADMIN_KEY_FILE:-}" ]; then
  key="$(cat "$TRITON_ADMIN_KEY_FILE")"
fi
set -- "$@"
if [ -n "$key" ]; then
  set -- "--grpc-restricted-protocol=model-repository:visrec-admin-key=$key" \
         "--http-restricted-api=model-repository:visrec-admin-key=$key" "$@"
else
  echo "start.sh: no TRITON_ADMIN_KEY(_FILE): the repository API is open to every client" >&2
fi
if [ -n "${TRITON_BACKEND_DIRECTORY:-}" ]; then
  set -- "--backend-directory=$TRITON_BACKEND_DIRECTORY" "$@"
fi
exec tritonserver "$@"
