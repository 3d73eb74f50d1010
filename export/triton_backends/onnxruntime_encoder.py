"""Triton python backend that runs this version's model.onnx with ONNX Runtime on the CPU.

Written next to model.onnx by `visrec-export --target cpu`: the pip Triton build used on machines
without a GPU only has the python backend. GPU targets use Triton's own onnxruntime / tensorrt
backends instead. All requests of a dynamic batch are run as one ONNX Runtime call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        sizes = [len(b) for b in batches]
        try:
            out = self.session.run(
                [self.output_name], {self.input_name: np.concatenate(batches).astype(np.float32)}
            )[0]
        except Exception as e:
            err = pb_utils.TritonError(f"encoder failed: {e}", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            embedding = np.ascontiguousarray(out[start:start + n], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", embedding)]))
            start += n
        return responses
