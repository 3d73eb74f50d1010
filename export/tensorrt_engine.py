"""ONNX -> TensorRT plan with a dynamic-batch optimisation profile (needs a GPU and TensorRT).

A plan only runs on the GPU model and TensorRT version that built it: build it on the serving
node type, with the TensorRT release of the Triton image (tritonserver 24.10 ships TensorRT 10.5).
"""

from __future__ import annotations

from pathlib import Path

from visrec.export.backbones import PreprocessSpec
from visrec.export.errors import ExportError
from visrec.export.repository import PIXELS


def tensorrt_available() -> str | None:
    """None when an engine can be built here, else the reason it cannot."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the 'tensorrt' Python package is not installed (pip install tensorrt)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    except ImportError:
        return "torch is not installed, so no GPU could be detected"
    return None


def build_engine(onnx_path: Path, plan_path: Path, spec: PreprocessSpec, *, max_batch: int,
                 opt_batch: int, fp16: bool = True, workspace_bytes: int = 1 << 30) -> None:
    reason = tensorrt_available()
    if reason is not None:
        raise ExportError(
            f"target gpu-tensorrt needs TensorRT and an NVIDIA GPU: {reason}. Run the export "
            "on a GPU node (the export image has TensorRT), or use --target gpu-onnx, which "
            "lets Triton's onnxruntime backend build TensorRT engines itself."
        )
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    chw = (3, spec.height, spec.width)
    profile.set_shape(PIXELS, (1, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT engine build failed (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
