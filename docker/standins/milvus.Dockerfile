# A stand-in for milvusdb/milvus where no image registry is reachable: the Milvus 2.3.5
# standalone server of the pip package `milvus` (embedded etcd, local storage), the same server
# the tests run. Production (docker-compose.prod.yml, the Milvus Operator) runs the official
# Milvus 2.5 with etcd and MinIO. Serves gRPC on 19530 and /healthz + /metrics on 9091.
ARG PYTHON_IMAGE=localhost/visrec-standin/python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
# curl: the production compose file's health check of Milvus uses it (the official image has it).
RUN apt-get update && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*
COPY requirements/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt "milvus==2.3.5" "setuptools<81" \
 && rm /tmp/constraints.txt \
 && useradd --uid 10002 --user-group --create-home --shell /usr/sbin/nologin milvus \
 && mkdir -p /var/lib/milvus && chown milvus:milvus /var/lib/milvus
COPY local/milvus_launcher.py /opt/visrec/milvus_launcher.py
USER milvus
VOLUME /var/lib/milvus
# The pip wrapper stops its Milvus on SIGINT (Ctrl-C), not SIGTERM.
STOPSIGNAL SIGINT
EXPOSE 19530 9091
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:9091/healthz"]
# The production compose file configures the official Milvus (etcd, MinIO) through these
# variables; this self-contained server must not read them.
ENTRYPOINT ["env", "-u", "ETCD_ENDPOINTS", "-u", "MINIO_ADDRESS", "python", "/opt/visrec/milvus_launcher.py", "--data", "/var/lib/milvus"]
