"""Triton python backend `image_embedding`: image bytes -> embedding, pinned to one version.

Version N of this model decodes and preprocesses with version N's preprocess.json and calls
version N of `image_encoder` through BLS, so a request for `image_embedding` version N is
embedded by exactly model version N, end to end. (A Triton ensemble cannot do this: its steps
name fixed versions in the one config.pbtxt shared by all versions, so during a rollout it would
serve N+1's encoder to requests meant for N.) Decoding happens here, on a thread pool, not in a
separate model: one hop less, and a corrupt image fails only its own request.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from imaging import ImageDecodeError, decode_batches, limits_of, load_spec


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.version = int(args["model_version"])
        self.spec = load_spec(os.path.join(args["model_repository"], args["model_version"]))
        self.limits = limits_of(params)
        self.encoder = params.get("encoder_model", "image_encoder")
        self.chunk = int(params.get("encoder_max_batch_size", "64"))
        threads = int(params.get("decode_threads", "0")) or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def _encode(self, pixels):
        """Embeddings for a batch, in chunks the encoder accepts; (array, None) or (None, err)."""
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
