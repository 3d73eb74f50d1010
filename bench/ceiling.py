"""The ceiling: the exported encoder in-process with ONNX Runtime, no server, no network.

Two layouts at each batch size, the best of which is the ceiling: one session on every core,
and (on a CPU) one single-threaded session per core run side by side (ORT releases the GIL);
for a model as small as EfficientNet-Lite0 the second measured ~10 % faster on 2 cores.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def ort_session(model: Path, threads: int, gpu: bool = False) -> Any:
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
    return ort.InferenceSession(str(model), options, providers=providers)


def _run(sessions: list[Any], x: np.ndarray, seconds: float) -> tuple[float, list[float]]:
    """Images per second with every session looping on ``x`` in its own thread, and the
    batch latencies."""
    name = sessions[0].get_inputs()[0].name
    for s in sessions:
        s.run(None, {name: x})  # warm-up
    runs: list[list[float]] = [[] for _ in sessions]
    t0 = time.perf_counter()

    def loop(i: int) -> None:
        while time.perf_counter() - t0 < seconds or len(runs[i]) < 3:
            t = time.perf_counter()
            sessions[i].run(None, {name: x})
            runs[i].append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return sum(len(r) for r in runs) * len(x) / elapsed, [v for r in runs for v in r]


def onnxruntime_throughput(model: Path, batch_sizes: list[int], seconds: float = 3.0,
                           threads: int = 0, size: tuple[int, int] = (224, 224),
                           gpu: bool = False) -> list[dict[str, Any]]:
    cores = os.cpu_count() or 1
    layouts = [(1, threads)] + ([(cores, 1)] if not gpu and cores > 1 else [])
    rng = np.random.default_rng(0)
    out = []
    for sessions_n, t in layouts:
        sessions = [ort_session(model, t, gpu) for _ in range(sessions_n)]
        for batch in batch_sizes:
            x = rng.standard_normal((batch, 3, *size)).astype(np.float32)
            rate, runs = _run(sessions, x, seconds)
            out.append({"batch": batch, "images_per_s": rate,
                        "batch_ms_p50": float(np.median(runs)) * 1000, "runs": len(runs),
                        "sessions": sessions_n, "threads": t or cores,
                        "providers": sessions[0].get_providers()[:1]})
    return out
