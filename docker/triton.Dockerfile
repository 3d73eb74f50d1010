# syntax=docker/dockerfile:1.7
# Triton for the GPU nodes: NGC's tritonserver 24.10 is Triton 2.51.0, the release the tests run
# against on CPU (nvidia-pytriton 0.7.0), with TensorRT 10.5 (the export image's TensorRT).
# Added: what the python-backend models import (preprocess and image_embedding: numpy < 2 and
# Pillow; the cpu target's encoder: onnxruntime) and the readiness check. The model repository
# is not in the image: the export job fills a volume mounted at /models. Build from the
# repository root:
#   docker build -f docker/triton.Dockerfile -t visrec-triton .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS runtime
COPY requirements/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt "numpy>=1.26,<2" "pillow>=10" \
      "onnxruntime>=1.18" \
 && rm /tmp/constraints.txt \
 && mkdir -p /models && chown 10001:10001 /models
COPY docker/triton/ready.py docker/triton/wait_for_repository.py docker/triton/start.sh \
     /opt/visrec/
# The NGC image's unprivileged user (uid 1000).
USER triton-server
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python3", "/opt/visrec/ready.py"]
# start.sh restricts the repository API to the admin key (TRITON_ADMIN_KEY[_FILE]).
ENTRYPOINT ["/opt/visrec/start.sh"]
# start.sh adds --load-model for what the repository's serving path calls.
CMD ["--model-repository=/models", "--model-control-mode=explicit", \
     "--strict-readiness=true", "--exit-on-error=false", \
     "--allow-metrics=true", "--allow-gpu-metrics=true"]
