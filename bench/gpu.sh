#!/usr/bin/env bash
# The benchmark on a GPU node, one target after the other: gpu-onnx (ONNX Runtime with the
# TensorRT accelerator, FP16) and, where TensorRT is importable, gpu-tensorrt (a plan). Triton is
# the visrec-triton image (docker/triton.Dockerfile: NGC 24.10 = Triton 2.51) serving the
# repository the export writes; the rest (perf_analyzer, the ORT ceiling on CUDA/TensorRT, the
# gateway load, Milvus) runs here. Reports: artifacts/bench-<target>/report.md.
#
#   bench/gpu.sh [extra python -m bench args]       e.g. --seconds 5 --only perf,gateway
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
docker image inspect visrec-triton >/dev/null 2>&1 || docker build -q -f docker/triton.Dockerfile -t visrec-triton .

targets=(gpu-onnx)
if .venv/bin/python -c "import tensorrt" 2>/dev/null; then targets+=(gpu-tensorrt); fi
for target in "${targets[@]}"; do
  repo="$PWD/build/bench/$target/model_repository"
  .venv/bin/visrec-export -q --target "$target" --repository "$repo"
  name="visrec-bench-triton-$target"
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run -d --name "$name" --gpus all --shm-size=1g -p 18001:8001 -p 18000:8000 \
    -v "$repo:/models:ro" visrec-triton >/dev/null
  trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
  for _ in $(seq 1 120); do
    curl -fsS http://127.0.0.1:18000/v2/health/ready >/dev/null 2>&1 && break
    sleep 2
  done
  curl -fsS http://127.0.0.1:18000/v2/health/ready >/dev/null || { docker logs "$name" | tail -50; exit 1; }
  .venv/bin/python -m bench --target "$target" --repository "$repo" \
    --triton-url 127.0.0.1:18001 --out "artifacts/bench-$target" "$@"
  docker rm -f "$name" >/dev/null
done
