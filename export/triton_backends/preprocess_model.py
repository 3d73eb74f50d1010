"""Triton python backend: encoded image bytes (TYPE_STRING) -> FP32 NCHW for the image encoder.

The resize / crop / mean / std come from this model's config.pbtxt parameters, written by
`visrec-export` from the backbone's own data config. A request whose image cannot be decoded
gets its own INVALID_ARG error; the other requests of the dynamic batch are answered normally.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from imaging import ImageDecodeError, decode, to_pixels


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.spec = {
            "height": int(params["height"]),
            "width": int(params["width"]),
            "resize_shorter": int(params["resize_shorter"]),
            "interpolation": params["interpolation"],
            "mean": [float(x) for x in params["mean"].split(",")],
            "std": [float(x) for x in params["std"].split(",")],
        }
        self.max_pixels = int(params.get("max_pixels", "40000000"))
        # Pillow releases the GIL while decoding and resizing: threads use every core.
        threads = int(params.get("decode_threads", "0")) or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def _one(self, data: bytes) -> np.ndarray:
        return to_pixels(decode(data, self.max_pixels), **self.spec)

    def execute(self, requests):
        images_per_request = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            images_per_request.append([bytes(x) for x in tensor.reshape(-1)])
        flat = [img for images in images_per_request for img in images]
        futures = [self.pool.submit(self._one, data) for data in flat]

        responses, i = [], 0
        for images in images_per_request:
            results, error = [], None
            for _ in images:
                try:
                    results.append(futures[i].result())
                except ImageDecodeError as e:
                    error = error or pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                except Exception as e:  # a bug must not fail the other requests of the batch
                    error = error or pb_utils.TritonError(
                        f"preprocess failed: {type(e).__name__}: {e}",
                        pb_utils.TritonError.INTERNAL)
                i += 1
            if error is not None:
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            pixels = np.stack(results) if results else np.zeros(
                (0, 3, self.spec["height"], self.spec["width"]), np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", pixels)]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
