# syntax=docker/dockerfile:1.7
# The gateway image. The builder stage generates the gRPC stubs and builds wheels (the project's
# and its dependencies'); the runtime stage installs them into a slim Python, runs as a non-root
# user and carries no compiler or build tool. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t visrec-gateway .
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools==1.62.*" "setuptools>=69,<81" wheel
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY proto proto
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY gateway gateway
COPY export export
RUN python scripts/gen_protos.py \
 && pip wheel --no-cache-dir --wheel-dir /wheels -c requirements/constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VISREC_GRPC_ADDRESS=[::]:50051 \
    VISREC_METRICS_PORT=9464 \
    VISREC_LOG_FORMAT=json
RUN groupadd --system --gid 10001 visrec \
 && useradd --system --uid 10001 --gid visrec --home-dir /app --shell /usr/sbin/nologin visrec
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels visrec \
 && rm -rf /wheels
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["visrec-healthcheck", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["visrec-gateway"]
