"""perf_analyzer (the real one, from tritonclient 2.51) against Triton over gRPC."""

from __future__ import annotations

import base64
import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from visrec.local.demo import photo

PERF = Path(sys.executable).parent / "perf_analyzer"


def _env() -> dict[str, str]:
    import nvidia.cuda_runtime  # libcudart.so.12, which perf_analyzer links

    lib = Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib),
                                                         env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def image_input_data(path: Path, images: list[bytes]) -> Path:
    """perf_analyzer --input-data JSON: BYTES elements carry a 4-byte little-endian length."""
    entries = [{"IMAGE": {"b64": base64.b64encode(struct.pack("<I", len(b)) + b).decode(),
                          "shape": [1]}} for b in images]
    path.write_text(json.dumps({"data": entries}))
    return path


def photos() -> list[bytes]:
    """Real photos as JPEG: the encoded inputs of the image benchmarks."""
    return [photo(name, "JPEG", quality=90)
            for name in ("chelsea", "coffee", "astronaut", "rocket")]


def run(model: str, url: str, out_csv: Path, *, concurrency: list[int], batch: int = 1,
        input_data: Path | None = None, shape: str | None = None, version: str = "",
        interval_ms: int = 5000, shared_memory: bool = False,
        server_pid: int | None = None) -> list[dict[str, Any]]:
    """perf_analyzer at each concurrency level (one run per level: the levels need not be
    evenly spaced); the rows of its CSVs with numbers as floats. Raw CSVs are kept.
    ``shared_memory``: tensors pass through system shared memory instead of the gRPC message
    (a co-located client; on 2 cores, serialising 16 x 600 KB per request over gRPC takes
    the cores the server is measured on).
    With ``server_pid`` (a Triton started here), each row also says how many CPU ms each image
    cost Triton and perf_analyzer over the whole run (trials and warm-up included)."""
    rows: list[dict[str, Any]] = []
    for c in concurrency:
        path = out_csv.with_name(f"{out_csv.stem}-c{c}.csv")
        before = _cpu(url, model, server_pid)
        n = len(rows)
        try:
            rows += _run_one(model, url, path, c, batch, input_data, shape, version, interval_ms,
                             shared_memory)
        except UnstableError:  # a shared 2-core machine is noisy: measure longer, once
            rows += _run_one(model, url, path, c, batch, input_data, shape, version,
                             interval_ms * 2, shared_memory)
        after = _cpu(url, model, server_pid)
        # A model reloaded meanwhile restarts its stub processes, whose CPU then leaves the
        # count (seen: -144 ms per image): no figure rather than a wrong one.
        if (before and after and after["images"] > before["images"]
                and after["processes"] == before["processes"]):
            images = after["images"] - before["images"]
            for r in rows[n:]:
                r["cpu_ms_per_image"] = {k: 1000 * (after[k] - before[k]) / images
                                         for k in ("triton", "perf_analyzer")}
    for r in rows:
        r["shared_memory"] = shared_memory
    return rows


def _cpu(url: str, model: str, server_pid: int | None) -> dict[str, Any] | None:
    """CPU seconds of Triton (with its python-backend stubs) and of finished children (the
    perf_analyzer runs), the images ``model`` has inferred so far, and Triton's processes."""
    if server_pid is None:
        return None
    import resource

    import tritonclient.grpc as g

    from bench.cpu import cpu_seconds, process_tree

    client = g.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    finally:
        client.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"triton": cpu_seconds(server_pid),
            "perf_analyzer": children.ru_utime + children.ru_stime,
            "images": float(sum(int(s.get("inference_count", 0)) for s in stats)),
            "processes": process_tree(server_pid)}


class UnstableError(RuntimeError):
    pass


def _run_one(model: str, url: str, out_csv: Path, concurrency: int, batch: int,
             input_data: Path | None, shape: str | None, version: str,
             interval_ms: int, shared_memory: bool = False) -> list[dict[str, Any]]:
    cmd = [str(PERF), "-m", model, "-i", "grpc", "-u", url, "-b", str(batch),
           "--concurrency-range", f"{concurrency}:{concurrency}",
           "--measurement-interval", str(interval_ms),
           "--stability-percentage", "50", "--max-trials", "10", "-f", str(out_csv)]
    if version:
        cmd += ["-x", version]
    if input_data is not None:
        cmd += ["--input-data", str(input_data)]
    if shape:
        cmd += ["--shape", shape]
    if shared_memory:
        cmd += ["--shared-memory", "system", "--output-shared-memory-size", str(4 << 20)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900,
                          check=False)
    if proc.returncode != 0 and "stable measurement" in proc.stdout + proc.stderr:
        raise UnstableError(f"{model} at concurrency {concurrency} did not stabilise")
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}): {proc.stdout[-1500:]}"
                           f"{proc.stderr[-1500:]}")
    rows: list[dict[str, Any]] = []
    with out_csv.open() as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    for r in rows:
        r["batch"] = batch
        r["images_per_s"] = r["Inferences/Second"]
    return rows

