"""bytes -> vector in one process: where the time goes stage by stage, and the whole-path ceiling.

The stages are those of the serving path (export/triton_backends/imaging.py and the encoder):
decode (Pillow, JPEG at reduced DCT scale where it covers the target), resize + crop, normalise
(uint8 HWC -> FP32 CHW) and encode (ONNX Runtime at the given batch, all cores). Each is timed
alone on real photos (JPEG) and on the catalog's PNGs.

The ceiling is the best one process does on this machine for the whole path: decoding on a
thread pool that overlaps with inference (Pillow and numpy release the GIL), every core busy,
batch and decode workers chosen by measurement. Triton's bytes -> vector is compared with it.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.ceiling import ort_session
from visrec.export.triton_backends import imaging


def _median_ms(fn: Any, arg: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def stage_times(model: Path, spec: Mapping[str, Any], images: Sequence[bytes], *,
                batch: int = 16, repeat: int = 5) -> dict[str, float]:
    """Median ms per image of each stage, one image at a time (encode: per image of a batch)."""
    shorter = int(spec["resize_shorter"])
    geometry = {k: spec[k] for k in ("height", "width", "resize_shorter", "interpolation")}
    decode, crop, norm = [], [], []
    for data in images:
        img = imaging.decode(data, shorter_side=shorter)
        cropped = imaging.resized_crop(img, **geometry)
        decode.append(_median_ms(lambda d: imaging.decode(d, shorter_side=shorter), data, repeat))
        crop.append(_median_ms(lambda i: imaging.resized_crop(i, **geometry), img, repeat))
        norm.append(_median_ms(lambda c: imaging.normalise(c, spec["mean"], spec["std"]),
                               cropped, repeat))
    session = ort_session(model, 0)
    name = session.get_inputs()[0].name
    x = np.stack([imaging.to_pixels(imaging.decode(d, shorter_side=shorter), **spec)
                  for d in (list(images) * batch)[:batch]])
    session.run(None, {name: x})
    encode = _median_ms(lambda a: session.run(None, {name: a}), x, repeat) / batch
    return {"decode": statistics.median(decode), "resize_crop": statistics.median(crop),
            "normalise": statistics.median(norm), "encode": encode,
            "input_bytes_fp32": float(x[0].nbytes), "input_bytes_uint8": float(x[0].nbytes / 4)}


def _one(data: bytes, spec: Mapping[str, Any]) -> np.ndarray:
    shorter = int(spec["resize_shorter"])
    return imaging.to_pixels(imaging.decode(data, shorter_side=shorter), **spec)


def pipelined(model: Path, spec: Mapping[str, Any], images: Sequence[bytes], *, batch: int,
              workers: int, ort_threads: int, decode_threads: int,
              seconds: float) -> dict[str, Any]:
    """Images per second of decode -> preprocess -> ORT with ``workers`` threads, each with its
    own ONNX Runtime session of ``ort_threads`` threads. With ``decode_threads`` a shared pool
    decodes each worker's next batch while its current one is encoded; with 0 a worker decodes
    its batch itself (the other workers keep the cores busy meanwhile)."""
    sessions = [ort_session(model, ort_threads) for _ in range(workers)]
    name = sessions[0].get_inputs()[0].name
    pool = ThreadPoolExecutor(max_workers=decode_threads) if decode_threads else None
    lock = threading.Lock()
    counter = itertools.count()
    done = [0]

    def next_batch() -> list[bytes]:
        with lock:
            return [images[next(counter) % len(images)] for _ in range(batch)]

    def submit() -> list[Future[np.ndarray]] | list[bytes]:
        data = next_batch()
        return [pool.submit(_one, d, spec) for d in data] if pool else data

    def pixels(item: Any) -> np.ndarray:
        return np.stack([f.result() for f in item] if pool else [_one(d, spec) for d in item])

    def work(session: Any, until: float) -> None:
        ahead = [submit()]
        while time.perf_counter() < until:
            current = ahead.pop(0)
            ahead.append(submit())
            session.run(None, {name: pixels(current)})
            with lock:
                done[0] += batch

    try:
        for session in sessions:  # warm-up
            session.run(None, {name: pixels(submit())})
        done[0] = 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=work, args=(s, t0 + seconds)) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    return {"batch": batch, "workers": workers, "ort_threads": ort_threads or os.cpu_count(),
            "decode_threads": decode_threads, "images_per_s": done[0] / elapsed,
            "cpu_ms_per_image": 1000 * cpu / max(1, done[0])}


def serial(model: Path, spec: Mapping[str, Any], images: Sequence[bytes], *, batch: int,
           seconds: float) -> dict[str, Any]:
    """The naive loop, for contrast: decode a batch, then encode it, one after the other."""
    session = ort_session(model, 0)
    name = session.get_inputs()[0].name
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x = np.stack([_one(images[(i + j) % len(images)], spec) for j in range(batch)])
        session.run(None, {name: x})
        done, i = done + batch, i + batch
    return {"batch": batch, "images_per_s": done / (time.perf_counter() - t0)}


def ceiling(model: Path, spec: Mapping[str, Any], images: Sequence[bytes], *,
            seconds: float = 4.0, batches: Sequence[int] = (2, 4, 8, 16)) -> dict[str, Any]:
    """Every layout tried and the best (the ceiling), plus the serial loop: one session on all
    cores with a decoding pool, or one single-threaded session per core (decoding on a pool
    or in the worker itself)."""
    cores = os.cpu_count() or 1
    layouts = [(1, 0, cores), (cores, 1, cores), (cores, 1, 0)]
    rows = [pipelined(model, spec, images, batch=b, workers=w, ort_threads=t,
                      decode_threads=d, seconds=seconds) for b in batches for w, t, d in layouts]
    best = max(rows, key=lambda r: r["images_per_s"])
    return {"rows": rows, "best": best,
            "serial": serial(model, spec, images, batch=best["batch"], seconds=seconds)}
