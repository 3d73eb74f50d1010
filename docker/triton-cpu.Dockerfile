# syntax=docker/dockerfile:1.7
# Triton on CPU, for clusters and hosts without a GPU (k8s/overlays/cpu, the CPU compose
# stack): the tritonserver 2.51.0 binary and python backend of the nvidia-pytriton wheel (the
# same build the tests run), with what the python-backend models import (numpy < 2, Pillow,
# ONNX Runtime for the cpu target's encoder). Runs as uid 1000 like NGC's image. Build from the
# repository root:
#   docker build -f docker/triton-cpu.Dockerfile -t visrec-triton-cpu .
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS runtime
# The python backend's stub links libpython3.11.so.1.0: the official image has it in
# /usr/local/lib; a Debian-built Python gets it from the libpython3.11 package.
RUN if ! ldconfig -p | grep -q 'libpython3.11.so.1.0'; then \
      apt-get update && apt-get install -y --no-install-recommends libpython3.11 \
      && rm -rf /var/lib/apt/lists/*; fi
COPY requirements/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt "nvidia-pytriton==0.7.0" \
      "numpy>=1.26,<2" "pillow>=10" "onnxruntime>=1.18" \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && ln -s "$site" /opt/python-site \
 && mkdir -p /opt/tritonserver \
 && cp -r "$site/pytriton/tritonserver/bin" "$site/pytriton/tritonserver/backends" /opt/tritonserver/ \
 && cp "$site/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
      /opt/tritonserver/backends/python/ \
 && echo "$site/nvidia_pytriton.libs" > /etc/ld.so.conf.d/nvidia-pytriton.conf && ldconfig \
 && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin triton-server \
 && rm /tmp/constraints.txt \
 && mkdir -p /models && chown 10001:10001 /models
COPY docker/triton/ready.py docker/triton/wait_for_repository.py docker/triton/start.sh \
     /opt/visrec/
# /models belongs to the export user (uid 10001): a new volume mounted there first by Triton
# stays writable for the export job. Triton only reads it.
# The stub runs the models with the image's own packages.
ENV PYTHONPATH=/opt/python-site \
    PATH=/opt/tritonserver/bin:$PATH \
    TRITON_BACKEND_DIRECTORY=/opt/tritonserver/backends
USER triton-server
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "/opt/visrec/ready.py"]
# start.sh restricts the repository API to the admin key (TRITON_ADMIN_KEY[_FILE]).
ENTRYPOINT ["/opt/visrec/start.sh"]
# start.sh adds --load-model for what the repository's serving path calls.
CMD ["--model-repository=/models", "--model-control-mode=explicit", \
     "--strict-readiness=true", "--exit-on-error=false", \
     "--allow-metrics=true", "--allow-gpu-metrics=false"]
