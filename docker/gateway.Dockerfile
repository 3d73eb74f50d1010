# syntax=docker/dockerfile:1.7
# The gateway image: the recommendation service (gateway/ = visrec.gateway), the package both
# services share (visrec/platform = visrec.platform) and exactly their runtime dependencies (pyproject.toml's [project] dependencies, pinned by
# requirements/constraints.txt). No ML service, no local tooling, no torch. The builder stage
# generates the gRPC stubs and builds the dependency wheels; the runtime stage installs them into
# a slim Python, carries no compiler or build tool, and runs as a non-root user on a read-only
# root filesystem. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t visrec-gateway .
# Where no registry is reachable, visrec-images builds it on a local stand-in of the same base.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools==1.62.*"
COPY pyproject.toml requirements/constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt -c constraints.txt \
 && sha256sum /wheels/*.whl > /wheels.sha256
COPY proto proto
COPY scripts/gen_protos.py scripts/gen_protos.py
RUN mkdir -p visrec/platform && python scripts/gen_protos.py

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    VISREC_GRPC_ADDRESS=[::]:50051 \
    VISREC_METRICS_PORT=9464 \
    VISREC_LOG_FORMAT=json
RUN groupadd --system --gid 10001 visrec \
 && useradd --system --uid 10001 --gid visrec --home-dir /app --shell /usr/sbin/nologin visrec
# A bind mount is not part of a layer's cache key (buildah's, at least): the checksums are, so
# the install below reruns whenever a wheel changed instead of keeping stale packages.
COPY --from=builder /wheels.sha256 /tmp/wheels.sha256
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl
COPY visrec/__init__.py /app/visrec/__init__.py
COPY visrec/platform /app/visrec/platform
COPY gateway /app/visrec/gateway
COPY --from=builder /src/visrec/platform/_pb /app/visrec/platform/_pb
# Compiled once here: the root filesystem is read-only at run time.
RUN python -m compileall -q /app/visrec && chmod -R a+rX /app
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "visrec.gateway.api.healthcheck", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["python", "-m", "visrec.gateway"]
