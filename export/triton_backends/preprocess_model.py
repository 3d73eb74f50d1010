"""Triton python backend `preprocess`: encoded image bytes (TYPE_STRING) -> FP32 NCHW.

Each version carries its own preprocess.json (the resize / crop / mean / std of the backbone
exported as that version), written by visrec-export. A request whose image cannot be decoded
gets its own INVALID_ARG error; the other requests of the dynamic batch are answered normally.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from imaging import ImageDecodeError, decode_batches, limits_of, load_spec


def error_for(e):
    if isinstance(e, ImageDecodeError):
        return pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
    return pb_utils.TritonError(f"preprocess failed: {type(e).__name__}: {e}",
                                pb_utils.TritonError.INTERNAL)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.spec = load_spec(os.path.join(args["model_repository"], args["model_version"]))
        self.limits = limits_of(params)
        threads = int(params.get("decode_threads", "0")) or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def execute(self, requests):
        images = [[bytes(x) for x in
                   pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy().reshape(-1)]
                  for r in requests]
        responses = []
        for result in decode_batches(self.pool, images, self.limits, self.spec):
            if isinstance(result, BaseException):
                responses.append(pb_utils.InferenceResponse(error=error_for(result)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", result)]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
