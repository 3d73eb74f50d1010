"""The ceiling: the exported encoder in-process with ONNX Runtime, no server, no network."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def onnxruntime_throughput(model: Path, batch_sizes: list[int], seconds: float = 3.0,
                           threads: int = 0, size: tuple[int, int] = (224, 224),
                           gpu: bool = False) -> list[dict[str, Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if gpu:  # the same accelerator the gpu-onnx config asks Triton for: TensorRT, FP16
        providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": True}),
                     "CUDAExecutionProvider", *providers]
        providers = [p for p in providers if (p[0] if isinstance(p, tuple) else p)
                     in ort.get_available_providers()]
    session = ort.InferenceSession(str(model), options, providers=providers)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    out = []
    for batch in batch_sizes:
        x = rng.standard_normal((batch, 3, *size)).astype(np.float32)
        session.run(None, {name: x})  # warm-up
        runs: list[float] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or len(runs) < 3:
            t = time.perf_counter()
            session.run(None, {name: x})
            runs.append(time.perf_counter() - t)
        per_batch = float(np.median(runs))
        out.append({"batch": batch, "images_per_s": batch / per_batch,
                    "batch_ms_p50": per_batch * 1000, "runs": len(runs),
                    "threads": threads or os.cpu_count(),
                    "providers": session.get_providers()[:1]})
    return out
