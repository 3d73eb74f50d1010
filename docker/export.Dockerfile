# syntax=docker/dockerfile:1.7
# The machine-learning service's image: visrec-export, -train, -evaluate, -ingest, -rollout, on
# the same Python 3.11 as every other image and the tests, with the same pins
# (requirements/constraints.txt). EXTRAS picks what it carries:
#   export,tensorrt (default)  torch (a ~5 GB CUDA build), timm, ONNX, ONNX Runtime, and
#                              TensorRT 10.5, the TensorRT of tritonserver 24.10: a plan runs
#                              only on the TensorRT that built it. For GPU nodes.
#   export                     the same without TensorRT (cpu and gpu-onnx targets).
#   jobs                       no torch: ingest, rollout, evaluate (the CPU test stack).
# Runs as uid 10001 and owns /models, so a new named volume mounted there is writable by it.
# No entrypoint: the job's command names the CLI. Build from the repository root:
#   docker build -f docker/export.Dockerfile -t visrec-export .
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools==1.62.*" "setuptools>=69,<81" wheel
COPY pyproject.toml README.md ./
COPY proto proto
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY visrec visrec
COPY gateway gateway
COPY export export
COPY local local
RUN python scripts/gen_protos.py && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && sha256sum /wheels/*.whl > /wheels.sha256

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=export,tensorrt
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    VISREC_MODEL_REPOSITORY=/models
COPY requirements/constraints.txt /tmp/constraints.txt
# A bind mount is not part of a layer's cache key (buildah's, at least): the wheel's checksum
# is, so the install below reruns whenever the code changed instead of keeping a stale wheel.
COPY --from=builder /wheels.sha256 /tmp/wheels.sha256
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    wheel="$(ls /wheels/visrec-*.whl)" \
 && pip install --no-cache-dir -c /tmp/constraints.txt "visrec[${EXTRAS}] @ file://${wheel}" \
 && rm /tmp/constraints.txt \
 && groupadd --system --gid 10001 visrec \
 && useradd --system --uid 10001 --gid visrec --home-dir /tmp --shell /usr/sbin/nologin visrec \
 && mkdir -p /models /work && chown visrec:visrec /models /work
WORKDIR /work
USER 10001:10001
CMD ["visrec-export", "--help"]
