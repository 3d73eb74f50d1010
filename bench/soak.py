"""python -m bench.soak: a steady open-loop mix against a real stack for N minutes; reports the
errors and the memory trend (RSS slope, least squares, MiB per minute) of the gateway and of
Triton (server plus its python-backend processes).

Starts its own Triton (CPU), Milvus Lite with the demo catalog, and a `visrec-gateway` process.
Results: <out>/soak.json and a line per minute on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import perf
from bench.stack import ROOT, wait_healthy
from bench.stats import percentiles
from visrec.local.demo_catalog import build_catalog
from visrec.local.milvus_server import free_port
from visrec.local.triton_server import DEFAULT_REPOSITORY, TritonServer
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc


def rss_mib(pid: int, with_children: bool = False) -> float:
    pids = [pid]
    if with_children:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                             check=False).stdout
        pids += [int(p) for p in out.split()]
    total = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per minute."""
    if len(samples) < 3:
        return float("nan")
    t, m = np.array(samples).T
    return float(np.polyfit(t / 60.0, m, 1)[0])


async def drive(address: str, item_ids: list[str], photos: list[bytes], rate: float,
                seconds: float, on_minute: Any) -> dict[str, Any]:
    """Open loop: call i goes out at start + i / rate whatever happened to the earlier ones."""
    latencies: dict[str, list[float]] = {}
    errors: list[str] = []
    users = [f"soak-{uuid.uuid4().hex[:6]}-{i}" for i in range(200)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        start = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            kind = ("SimilarItems", "Recommend", "RecordInteraction", "SimilarItems",
                    "Recommend", "SearchByImage")[i % 6]
            user = users[i % len(users)]
            t = time.perf_counter()
            try:
                if kind == "SimilarItems":
                    await stub.SimilarItems(pb.SimilarItemsRequest(
                        item_id=item_ids[i % len(item_ids)], k=10), timeout=10)
                elif kind == "Recommend":
                    await stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
                elif kind == "RecordInteraction":
                    await stub.RecordInteraction(pb.RecordInteractionRequest(
                        user_id=user, item_id=item_ids[(i * 31) % len(item_ids)],
                        type=pb.INTERACTION_TYPE_CLICK, request_id=f"soak-{i}"), timeout=10)
                else:
                    await stub.SearchByImage(pb.SearchByImageRequest(
                        image=photos[i % len(photos)], k=10), timeout=10)
                latencies.setdefault(kind, []).append(time.perf_counter() - t)
            except grpc.aio.AioRpcError as e:
                errors.append(f"{kind}: {e.code().name}: {e.details()}")

        i, minute = 0, 1
        while (now := time.perf_counter() - start) < seconds:
            due = i / rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            if now >= minute * 60:
                on_minute(minute, i, len(errors))
                minute += 1
        await asyncio.gather(*tasks)
    return {"calls": i, "errors": len(errors), "error_samples": sorted(set(errors))[:5],
            "latency": {k: percentiles(v) for k, v in latencies.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    p.add_argument("--rate", type=float, default=20.0, help="calls per second (default 20)")
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "soak",
                   help="where soak.json goes")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(Path(sys.executable).parent / "visrec-export"), "-q"], check=True)
    catalog = build_catalog()
    triton = TritonServer(repository=DEFAULT_REPOSITORY, http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port(),
                          log_file=args.out / "triton.log").start()
    db = args.out / f"soak-{uuid.uuid4().hex[:6]}.db"
    gateway = None
    try:
        # In a child process: Milvus Lite holds its file until the process that opened it
        # exits, and the gateway must open it next.
        subprocess.run([str(Path(sys.executable).parent / "visrec-ingest"), "--catalog",
                        str(catalog), "--milvus-uri", str(db), "--triton-url", triton.grpc_url],
                       check=True)
        address = f"127.0.0.1:{free_port()}"
        env = {**os.environ, "VISREC_GRPC_ADDRESS": address, "VISREC_METRICS_PORT": "0",
               "VISREC_MILVUS_URI": str(db), "VISREC_TRITON_URL": triton.grpc_url,
               "VISREC_LOG_LEVEL": "WARNING"}
        gateway = subprocess.Popen([str(Path(sys.executable).parent / "visrec-gateway")],
                                   env=env)
        wait_healthy(address)
        item_ids = [json.loads(line)["id"] for line in catalog.read_text().splitlines()]
        assert triton.process is not None
        gateway_pid, triton_pid = gateway.pid, triton.process.pid
        t0 = time.monotonic()
        samples: dict[str, list[tuple[float, float]]] = {"gateway": [], "triton": []}
        stop = False

        async def sample() -> None:
            while not stop:
                t = time.monotonic() - t0
                samples["gateway"].append((t, rss_mib(gateway_pid)))
                samples["triton"].append((t, rss_mib(triton_pid, with_children=True)))
                await asyncio.sleep(5)

        def on_minute(minute: int, calls: int, errors: int) -> None:
            print(f"[soak] minute {minute}: {calls} calls, {errors} errors, gateway "
                  f"{samples['gateway'][-1][1]:.0f} MiB, triton {samples['triton'][-1][1]:.0f} "
                  f"MiB", flush=True)

        async def run() -> dict[str, Any]:
            nonlocal stop
            sampler = asyncio.create_task(sample())
            result = await drive(address, item_ids, perf.photos(), args.rate,
                                 args.minutes * 60, on_minute)
            stop = True
            await sampler
            return result

        result = asyncio.run(run())
        # the first minute is warm-up (caches, allocator arenas): the slope is of the rest
        steady = {k: [(t, m) for t, m in v if t >= 60] or v for k, v in samples.items()}
        result.update({
            "minutes": args.minutes, "rate": args.rate,
            "rss_mib": {k: {"start": v[0][1], "end": v[-1][1],
                            "slope_mib_per_min_after_1min": slope_per_min(steady[k])}
                        for k, v in samples.items()},
            "samples": samples})
        (args.out / "soak.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
        return 0 if result["errors"] == 0 else 1
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        triton.stop()


if __name__ == "__main__":
    sys.exit(main())
