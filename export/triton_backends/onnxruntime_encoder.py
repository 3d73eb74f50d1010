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
        # ORT's idle threads spin a moment before sleeping (its default), which suits a model
        # with the cores to itself; on 2 cores runs disagreed (spinning 216 vs 187 images/s in
        # one, 165 vs 208 in another), so ORT's default stays; ort_spinning = 0 turns it off.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         params.get("ort_spinning", "1"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # On a CPU, small ORT batches are faster per image (activations stay in cache):
        # EfficientNet-Lite0 in-process, 1 session x 2 threads: batch 4 257 images/s, 16 192.
        self.ort_batch = int(params.get("ort_batch", "0")) or (1 << 30)

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        sizes = [len(b) for b in batches]
        pixels = batches[0] if len(batches) == 1 else np.concatenate(batches)
        try:
            out = np.concatenate([
                self.session.run([self.output_name],
                                 {self.input_name: pixels[i:i + self.ort_batch]})[0]
                for i in range(0, len(pixels), self.ort_batch)])
        except Exception as e:
            err = pb_utils.TritonError(f"encoder failed: {e}", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            embedding = np.ascontiguousarray(out[start:start + n], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", embedding)]))
            start += n
        return responses
