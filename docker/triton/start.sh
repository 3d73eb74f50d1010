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
# Without --load-model: load what the serving path calls (export/repository.py serving_models):
# image_embedding alone where it runs its encoder with ONNX Runtime (the cpu target), else
# image_encoder too. preprocess is exported for perf_analyzer, not loaded to serve.
repository=/models
loads=""
for arg in "$@"; do
  case "$arg" in
    --model-repository=*) repository="${arg#--model-repository=}" ;;
    --load-model=*) loads=yes ;;
  esac
done
if [ -z "$loads" ]; then
  config="$repository/image_embedding/config.pbtxt"
  if [ ! -f "$config" ]; then
    set -- "$@" --load-model=preprocess --load-model=image_encoder --load-model=image_embedding
  elif grep -A3 'key: "encoder_runtime"' "$config" | grep -q '"onnxruntime"'; then
    set -- "$@" --load-model=image_embedding
  else
    set -- "$@" --load-model=image_encoder --load-model=image_embedding
  fi
fi
if [ -n "${TRITON_BACKEND_DIRECTORY:-}" ]; then
  set -- "--backend-directory=$TRITON_BACKEND_DIRECTORY" "$@"
fi
exec tritonserver "$@"
