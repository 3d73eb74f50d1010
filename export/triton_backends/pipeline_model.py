"""Triton python backend `image_embedding`: image bytes -> embedding, pinned to one version.

Version N of this model decodes and preprocesses with version N's preprocess.json and encodes
with version N of `image_encoder`, so a request for `image_embedding` version N is embedded by
exactly model version N, end to end. (A Triton ensemble cannot do this: its steps name fixed
versions in the one config.pbtxt shared by all versions, so during a rollout it would serve
N+1's encoder to requests meant for N.) Decoding happens here, on a thread pool, not in a
separate model: one hop less, and a corrupt image fails only its own request.

How version N's encoder runs is the config's `encoder_runtime` parameter:
- `triton` (GPU targets): a BLS call to `image_encoder` version N, which Triton runs with its
  onnxruntime / tensorrt backend on the GPU.
- `onnxruntime` (the cpu target): `image_encoder/N/model.onnx` in this process. On a CPU the BLS
  hop to the encoder (another python-backend process) copies every FP32 batch through shared
  memory twice and schedules a second model; measured on 2 cores it cost ~25 % of throughput.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from imaging import ImageDecodeError, decode_batches, limits_of, load_spec


def _cpus():
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 quota (a pod's
    CPU limit; os.cpu_count() is the node's)."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _onnxruntime_session(path, threads, spinning):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle ORT threads spin by default: right when ORT has the cores to itself, wrong here,
    # where decoding threads and other instances need them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.version = int(args["model_version"])
        self.spec = load_spec(os.path.join(args["model_repository"], args["model_version"]))
        self.limits = limits_of(params)
        self.encoder = params.get("encoder_model", "image_encoder")
        self.chunk = int(params.get("encoder_max_batch_size", "64"))
        self.session = None
        # On a CPU, small ORT batches are faster per image (activations stay in cache):
        # EfficientNet-Lite0 in-process, 2 sessions x 1 thread: batch 2 346 images/s, 4 285,
        # 8 253, 16 228. In Triton slices of 2 and 4 were within noise of each other.
        self.ort_batch = int(params.get("ort_batch", "0")) or self.chunk
        if params.get("encoder_runtime", "triton") == "onnxruntime":
            # 0: the cores shared out among this model's instances. On 2 cores, 2 instances x 1
            # thread: 145 images/s; x 2 threads (oversubscribed) with ORT's spinning: 80; without
            # spinning 154 vs 161 for x 1.
            instances = sum(g.get("count", 1) for g in config.get("instance_group", [])) or 1
            threads = (int(params.get("intra_op_threads", "0"))
                       or max(1, _cpus() // instances))
            self.session = _onnxruntime_session(os.path.join(
                os.path.dirname(args["model_repository"]), self.encoder, args["model_version"],
                "model.onnx"), threads, params.get("ort_spinning", "0") == "1")
        threads = int(params.get("decode_threads", "0")) or min(4, _cpus())
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def _encode(self, pixels):
        """Embeddings for a batch, in chunks the encoder accepts; (array, None) or (None, err)."""
        if self.session is not None:
            name = self.session.get_inputs()[0].name
            try:
                return np.concatenate([
                    self.session.run(None, {name: pixels[i:i + self.ort_batch]})[0]
                    for i in range(0, len(pixels), self.ort_batch)]), None
            except Exception as e:
                return None, pb_utils.TritonError(
                    f"{self.encoder} version {self.version}: {e}", pb_utils.TritonError.INTERNAL)
        parts = []
        for start in range(0, len(pixels), self.chunk):
            request = pb_utils.InferenceRequest(
                model_name=self.encoder, model_version=self.version,
                requested_output_names=["EMBEDDING"],
                inputs=[pb_utils.Tensor("PIXELS", pixels[start:start + self.chunk])])
            response = request.exec()
            if response.has_error():
                return None, pb_utils.TritonError(
                    f"{self.encoder} version {self.version}: {response.error().message()}",
                    pb_utils.TritonError.UNAVAILABLE)
            parts.append(pb_utils.get_output_tensor_by_name(response, "EMBEDDING").as_numpy())
        return np.concatenate(parts), None

    def execute(self, requests):
        images = [[bytes(x) for x in
                   pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy().reshape(-1)]
                  for r in requests]
        decoded = decode_batches(self.pool, images, self.limits, self.spec)
        ok = [p for p in decoded if not isinstance(p, BaseException) and len(p)]
        embeddings, error = (None, None)
        if ok:
            embeddings, error = self._encode(np.ascontiguousarray(np.concatenate(ok)))
        responses, start = [], 0
        for result in decoded:
            if isinstance(result, ImageDecodeError):
                err = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
            elif isinstance(result, BaseException):
                err = pb_utils.TritonError(f"preprocess failed: {type(result).__name__}: "
                                           f"{result}", pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(error=err))
            elif error is not None:
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                n = len(result)
                out = (embeddings[start:start + n] if n and embeddings is not None
                       else np.zeros((0, 1), np.float32))
                start += n
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("EMBEDDING", np.ascontiguousarray(out, dtype=np.float32))]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
