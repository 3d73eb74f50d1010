# syntax=docker/dockerfile:1.7
# Triton for the GPU nodes: NGC's tritonserver 24.10 is Triton 2.51.0, the release the tests run
# against on CPU (nvidia-pytriton 0.7.0), with TensorRT 10.5. Added: what the python-backend
# models import (preprocess: numpy < 2 and Pillow; the cpu target's encoder: onnxruntime).
# The model repository itself is not in the image: the export job fills a volume mounted at
# /models. Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t visrec-triton .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS runtime
RUN pip install --no-cache-dir "numpy>=1.26,<2" "pillow>=10,<13" "onnxruntime>=1.18,<1.21"
# The NGC image's unprivileged user.
USER triton-server
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--model-control-mode=explicit", \
     "--load-model=preprocess", "--load-model=image_encoder", \
     "--load-model=image_embedding", "--strict-readiness=true", "--exit-on-error=false", \
     "--allow-metrics=true", "--allow-gpu-metrics=true"]
