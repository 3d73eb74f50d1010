"""python -m bench: every benchmark in one run, side by side, then the report.

Starts its own Triton (CPU), Milvus server and gateway on free ports; nothing else may be
running on the Milvus server's fixed ports (9091, etcd). Results accumulate in
<out>/results.json; the report is <out>/report.md with PNG plots beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench import ceiling, cpu, direct, load, paired, perf, report, scale, stages
from visrec.export.indexing.ingest import ingest
from visrec.export.milvus import MilvusDatabase
from visrec.local.demo_catalog import build_catalog
from visrec.local.milvus_server import MilvusServer, free_port
from visrec.local.triton_server import DEFAULT_REPOSITORY, TritonServer
from visrec.platform.triton_embedder import TritonEmbedder

ROOT = Path(__file__).resolve().parent.parent
ALONE = frozenset({"load generator"})  # this process: Triton, Milvus, gateway are its children


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
        text=True, check=False).stdout.strip()
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "gpu": gpu or "none", "python": platform.python_version(),
            "triton": "2.51.0 (nvidia-pytriton 0.7.0, CPU) unless --triton-url says otherwise",
            "onnxruntime": onnxruntime.__version__,
            "milvus": "Lite 2.5.1 and server 2.3.5", "date": time.strftime("%Y-%m-%d %H:%M")}


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2, default=float))
        print(f"[bench] {key}: done", flush=True)


def load_config(url: str, model: str, change: dict[str, Any]) -> None:
    """Reload ``model`` with its current config updated by ``change`` (repository API)."""
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    config = client.get_model_config(model, as_json=True)["config"]
    config.update(change)
    client.load_model(model, config=json.dumps(config))
    client.close()


def tune(url: str, out: Path, seconds_ms: int, images: Path) -> dict[str, Any]:
    """Before / after for the knobs that matter on this machine."""
    def params(**kw: Any) -> dict[str, Any]:
        return {k: {"string_value": str(v)} for k, v in kw.items()}

    def instances(n: int) -> list[dict[str, Any]]:
        return [{"count": n, "kind": "KIND_CPU"}]

    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("image_encoder", "as exported: 1 instance, all cores, ORT slices of 4, spinning", {}),
        ("image_encoder", "whole dynamic batch in one ORT run", {"parameters": params(
            ort_batch=1 << 20)}),
        ("image_encoder", "ORT threads do not spin", {"parameters": params(ort_spinning=0)}),
        ("image_encoder", "2 instances x 1 ORT thread", {
            "instance_group": instances(2), "parameters": params(intra_op_threads=1)}),
        ("image_embedding", "as exported: 2 instances x 1 ORT thread in-process, slices of 4",
         {}),
        ("image_embedding", "encoder through BLS (the GPU layout)", {"parameters": params(
            encoder_runtime="triton")}),
        ("image_embedding", "1 instance x all cores", {"instance_group": instances(1)}),
        ("image_embedding", "3 instances", {"instance_group": instances(3)}),
        ("image_embedding", "2 instances x 2 ORT threads (oversubscribed)", {
            "parameters": params(intra_op_threads=2)}),
        ("image_embedding", "whole dynamic batch in one ORT run", {"parameters": params(
            ort_batch=1 << 20)}),
        ("image_embedding", "1 decoding thread per instance", {"parameters": params(
            decode_threads=1)}),
    ]
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    original = {m: client.get_model_config(m, as_json=True)["config"]
                for m in ("image_encoder", "image_embedding")}
    client.close()
    rows: list[dict[str, Any]] = []
    for model, label, change in variants:
        config = json.loads(json.dumps(original[model]))
        config.update({k: v for k, v in change.items() if k != "parameters"})
        config.setdefault("parameters", {}).update(change.get("parameters", {}))
        load_config(url, model, config)
        if model == "image_encoder":
            r = perf.run(model, url, out / f"tune-{len(rows)}.csv", concurrency=[4], batch=1,
                         shape="PIXELS:3,224,224", interval_ms=seconds_ms)
        else:
            r = perf.run(model, url, out / f"tune-{len(rows)}.csv", concurrency=[16], batch=1,
                         input_data=images, interval_ms=seconds_ms)
        rows.append({"model": model, "variant": label, "images_per_s": r[0]["images_per_s"],
                     "p50_ms": r[0]["p50 latency"] / 1000})
        load_config(url, model, original[model])
    return {"variants": rows}


async def seed_users(address: str, item_ids: list[str], users: int = 60) -> list[str]:
    import grpc

    from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
    from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

    ids = [f"bench-{i}" for i in range(users)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for n, user in enumerate(ids):
            for j in range(5):
                await stub.RecordInteraction(pb.RecordInteractionRequest(
                    user_id=user, item_id=item_ids[(n * 37 + j * 11) % len(item_ids)],
                    type=pb.INTERACTION_TYPE_CLICK, request_id=f"seed-{j}"), timeout=30)
    return ids


def stage_totals(metrics_url: str) -> dict[str, tuple[float, float]]:
    """(seconds, calls) so far of each stage histogram of the gateway."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("visrec_stage_duration_seconds_sum"):
            stage = line.split('stage="')[1].split('"')[0]
            sums[stage] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("visrec_stage_duration_seconds_count"):
            stage = line.split('stage="')[1].split('"')[0]
            counts[stage] = float(line.rsplit(" ", 1)[1])
    return {s: (sums[s], counts.get(s, 0.0)) for s in sums}


def stage_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
                ) -> dict[str, float]:
    """Mean ms per call of each stage between two snapshots: one run, not the whole session
    (an average over every run, overload included, says nothing about a single request)."""
    out = {}
    for stage, (total, calls) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if calls > c0:
            out[stage] = 1000 * (total - t0) / (calls - c0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench",
                   help="where results.json, report.md, plots and raw CSVs go")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each load run")
    p.add_argument("--scale", default="10000,100000",
                   help="collection sizes of the ANN scale test (add 1000000 for 1M; slow)")
    p.add_argument("--scale-backends", default="lite,server",
                   help="where the ANN scale test runs: lite (Milvus Lite, IVF_FLAT), server "
                   "(Milvus server, HNSW); 1M on Lite takes hours")
    p.add_argument("--scale-data", choices=scale.SHAPES, default="mixtures",
                   help="shape of the ANN scale test's vectors (see bench/scale.py)")
    p.add_argument("--only", default="", help="comma-separated subset: perf,tune,gateway "
                   "(with UpsertItems),ingest,scale (empty: all)")
    p.add_argument("--target", choices=["cpu", "gpu-onnx", "gpu-tensorrt"], default="cpu",
                   help="export target benchmarked; gpu targets need --triton-url (a Triton "
                   "with the onnxruntime / tensorrt backends, e.g. the NGC container, serving "
                   "--repository)")
    p.add_argument("--repository", type=Path, default=None,
                   help="model repository to export into and serve (default: the project's "
                   "for cpu, build/bench/<target>/model_repository otherwise)")
    p.add_argument("--triton-url", default="",
                   help="benchmark this running Triton (gRPC host:port) instead of starting "
                   "the CPU one")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from <out>/results.json")
    args = p.parse_args(argv)
    backends = set(filter(None, args.scale_backends.split(",")))
    if not backends <= {"lite", "server"}:
        p.error(f"--scale-backends takes lite and/or server, not {args.scale_backends!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")
    if args.report_only:
        report.write(results.data, args.out)
        return 0
    only = set(filter(None, args.only.split(","))) or {"perf", "tune", "gateway", "ingest",
                                                       "scale"}
    results.put("machine", machine())

    if args.target != "cpu" and not args.triton_url:
        p.error(f"--target {args.target} needs --triton-url: the Triton started here (the "
                "nvidia-pytriton wheel) has only the python backend")
    repository = args.repository or (DEFAULT_REPOSITORY if args.target == "cpu" else
                                     ROOT / "build" / "bench" / args.target / "model_repository")
    results.put("target", args.target)
    subprocess.run([str(Path(sys.executable).parent / "visrec-export"), "-q", "--target",
                    args.target, "--repository", str(repository)], check=True)
    if args.target != "cpu":
        only.discard("tune")  # its knobs (ORT threads of the python backend) are the CPU's
    catalog = build_catalog()
    triton = TritonServer(repository=repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=args.out / "triton.log")
    if args.triton_url:
        triton_url = args.triton_url
        import tritonclient.grpc as g

        client = g.InferenceServerClient(triton_url)
        for model in ("preprocess", "image_encoder", "image_embedding"):
            client.load_model(model)  # explicit model control: load what is benchmarked
        client.close()
    else:
        triton.start()
        triton_url = triton.grpc_url
    server_pid = triton.process.pid if triton.process is not None else None
    shutil.rmtree(args.out / "milvus-server", ignore_errors=True)  # a fresh server each run
    milvus = MilvusServer(args.out / "milvus-server", port=free_port())
    gateway_proc = None
    try:
        images = perf.image_input_data(args.out / "images.json", perf.photos())
        interval = int(max(3.0, args.seconds / 2) * 1000)
        if "perf" in only:
            enc = []
            for batch in (1, 4, 8, 16):  # 4: the slice the encoder runs ORT on
                enc += perf.run("image_encoder", triton_url,
                                args.out / f"perf-image_encoder-b{batch}.csv",
                                concurrency=[1, 2, 4], batch=batch, shape="PIXELS:3,224,224",
                                interval_ms=interval, server_pid=server_pid)
            # The same with the tensors in shared memory: what the server does when the client
            # does not take the same 2 cores to serialise 16 x 600 KB per request.
            enc += perf.run("image_encoder", triton_url, args.out / "perf-image_encoder-shm.csv",
                            concurrency=[2, 4], batch=16, shape="PIXELS:3,224,224",
                            interval_ms=interval, shared_memory=True, server_pid=server_pid)
            results.put("perf_image_encoder", enc)
            pipe = perf.run("image_embedding", triton_url,
                            args.out / "perf-image_embedding.csv",
                            concurrency=[1, 2, 4, 8, 16, 32], input_data=images,
                            interval_ms=interval, server_pid=server_pid)
            results.put("perf_image_embedding", pipe)
            seconds = max(3.0, args.seconds / 2)
            results.put("ceiling_onnxruntime", ceiling.onnxruntime_throughput(
                _onnx_file(repository), [1, 2, 4, 8, 16, 32, 64], seconds=seconds,
                gpu=args.target != "cpu"))
            if args.target == "cpu":  # the whole path in-process: this machine's CPU path
                spec = _spec(repository)
                pngs = _catalog_images(catalog, 64)
                results.put("stages_inprocess", {
                    "photos (JPEG)": stages.stage_times(_onnx_file(repository), spec,
                                                        perf.photos()),
                    "catalog (PNG)": stages.stage_times(_onnx_file(repository), spec, pngs)})
                results.put("ceiling_whole_path", stages.ceiling(
                    _onnx_file(repository), spec, perf.photos(), seconds=seconds))
        if "tune" in only:
            results.put("tuning", tune(triton_url, args.out, interval, images))

        if "gateway" in only:
            milvus.start()
            db = MilvusDatabase(milvus.uri, timeout_s=60, index_type="HNSW")
            embedder = TritonEmbedder(triton_url, timeout_s=300)
            served = asyncio.run(ingest(catalog, db.admin, db.items, embedder,
                                        changes=db.changes, progress=False))
            results.put("ingest_server", {"images": served.embedded, "seconds": served.seconds,
                                          "images_per_s": served.images_per_s})
            db.close_sync()
            port, metrics_port = free_port(), free_port()
            address = f"127.0.0.1:{port}"
            env = {**os.environ, "VISREC_GRPC_ADDRESS": address,
                   "VISREC_METRICS_PORT": str(metrics_port), "VISREC_MILVUS_URI": milvus.uri,
                   "VISREC_TRITON_URL": triton_url, "VISREC_LOG_LEVEL": "WARNING"}
            gateway_proc = subprocess.Popen([str(Path(sys.executable).parent / "visrec-gateway")],
                                            env=env)
            _wait_healthy(address)
            item_ids = [json.loads(line)["id"] for line in catalog.read_text().splitlines()]
            rng = np.random.default_rng(0)
            queries = [item_ids[i] for i in rng.choice(len(item_ids), 200, replace=False)]
            users = asyncio.run(seed_users(address, item_ids))
            photos = perf.photos()
            runs: dict[str, list[dict[str, Any]]] = {}
            stages_at_1: dict[str, dict[str, float]] = {}
            pids = {"gateway": gateway_proc.pid, "load generator": os.getpid()}
            if milvus.process is not None:
                pids["milvus"] = milvus.process.pid
            if triton.process is not None:
                pids["triton"] = triton.process.pid
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            for name, call, levels in (
                ("SimilarItems", load.similar_items(queries), [1, 4, 16]),
                ("Recommend", load.recommend(users), [1, 4, 16]),
                ("SearchByImage", load.search_by_image(photos), [1, 4, 8]),
            ):
                runs[name] = []
                for c in levels:
                    before, cpu_before = stage_totals(metrics_url), cpu.snapshot(pids, ALONE)
                    run = asyncio.run(load.closed_loop(address, call, c, args.seconds))
                    # warm-up requests count too: the CPU snapshot covers them
                    run["cpu_ms_per_request"] = cpu.per_request_ms(
                        cpu_before, cpu.snapshot(pids, ALONE),
                        run["requests"] + run["warmup_requests"])
                    runs[name].append(run)
                    if c == 1:  # where a request has the gateway to itself
                        stages_at_1[name] = stage_means(before, stage_totals(metrics_url))
            # The same Milvus calls without the gateway, right after the gateway's own runs and
            # before the upserts below (Milvus flushes and compacts after them for a while).
            results.put("direct_milvus_similar_items", direct.similar_items_direct(
                milvus.uri, "items_v1", queries, 10, args.seconds))
            vectors = asyncio.run(_embed(triton_url, photos))
            results.put("direct_milvus_search", direct.search_direct(
                milvus.uri, "items_v1", vectors, 10, args.seconds))
            # What the direct baselines do not show: Milvus after an idle gap, SearchByImage's
            # two calls back to back without the gateway, a gRPC call that does nothing.
            results.put("milvus_search_after_idle", direct.search_after_idle(
                milvus.uri, "items_v1", vectors, 10))
            results.put("direct_search_by_image", direct.search_by_image_direct(
                triton_url, milvus.uri, "items_v1", photos, 10, args.seconds))
            results.put("grpc_floor", asyncio.run(load.grpc_floor(address, args.seconds)))
            # The latency targets compare the gateway with its backends in interleaved rounds:
            # the machine drifts more in minutes than the gateway costs.
            short = max(1.0, args.seconds / 4)

            def gateway_p50(call: load.Call) -> float:
                return float(asyncio.run(load.closed_loop(address, call, 1, short,
                                                          warmup_s=0.3))["p50_ms"])

            results.put("paired_similar_items", paired.rounds({
                "gateway": lambda: gateway_p50(load.similar_items(queries)),
                "direct": lambda: direct.similar_items_direct(
                    milvus.uri, "items_v1", queries, 10, short)["p50_ms"]}))
            results.put("paired_search_by_image", paired.rounds({
                "gateway": lambda: gateway_p50(load.search_by_image(photos)),
                "triton": lambda: direct.embed_direct(triton_url, photos, short)["p50_ms"],
                "search": lambda: direct.search_direct(
                    milvus.uri, "items_v1", vectors, 10, short)["p50_ms"],
                "back to back": lambda: direct.search_by_image_direct(
                    triton_url, milvus.uri, "items_v1", photos, 10, short)["p50_ms"]}))
            # Triton's bytes -> vector at 1 in flight under the same conditions (Milvus and the
            # gateway up and idling, as during SearchByImage): the other half of its target.
            results.put("direct_triton_embedding", perf.run(
                "image_embedding", triton_url, args.out / "perf-image_embedding-stack.csv",
                concurrency=[1], input_data=images, interval_ms=interval)[0])
            runs["SimilarItems open loop"] = [
                asyncio.run(load.open_loop(address, load.similar_items(queries), r,
                                           args.seconds)) for r in (50, 100, 150, 200, 300)]
            results.put("gateway", runs)
            # Online catalog changes: the catalog's images as new items, 32 per stream.
            rows = [json.loads(line) for line in catalog.read_text().splitlines()[:512]]
            fresh = [(pb_item(f"bench-upsert-{n}", r), (catalog.parent / r["image"]).read_bytes())
                     for n, r in enumerate(rows)]
            upserts = [asyncio.run(load.upserts(address, fresh, streams=s, batch=32,
                                                seconds=args.seconds)) for s in (4, 8)]
            results.put("upsert", max(upserts, key=lambda r: r["items_per_s"]))
            results.put("upsert_runs", upserts)
            results.put("stages_ms", stages_at_1)
            gateway_proc.terminate()  # its background refreshes would disturb what follows
            gateway_proc.wait(30)
            gateway_proc = None
        if "ingest" in only:
            db = args.out / f"ingest-{uuid.uuid4().hex[:6]}.db"
            lite = MilvusDatabase(str(db), timeout_s=60)
            embedder = TritonEmbedder(triton_url, timeout_s=300)
            r = asyncio.run(ingest(catalog, lite.admin, lite.items, embedder, progress=False))
            lite.close_sync()
            results.put("ingest", {"images": r.embedded, "seconds": r.seconds,
                                   "images_per_s": r.images_per_s})
        if "scale" in only:
            base = _catalog_vectors(triton_url, catalog, args.out)
            sizes = [int(s) for s in args.scale.split(",") if s]
            rows = []
            if "lite" in backends:
                rows += scale.run(str(args.out / "scale-lite.db"), "lite", base, sizes,
                                  shape=args.scale_data)
            if "server" in backends:
                if milvus.process is None:
                    milvus.start()
                rows += scale.run(milvus.uri, "server", base, sizes, shape=args.scale_data)
            results.put("scale", rows)
    finally:
        if gateway_proc is not None:
            gateway_proc.terminate()
            gateway_proc.wait(30)
        milvus.stop()
        triton.stop()
    report.write(results.data, args.out)
    print(f"[bench] report: {args.out / 'report.md'}")
    return 0


def pb_item(item_id: str, row: dict[str, Any]) -> Any:
    from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb

    item = pb.Item(id=item_id, name=row["name"], category=row["category"],
                   subcategory=row["subcategory"])
    item.attributes.update({k: v for k, v in row.items() if k not in (
        "id", "image", "name", "category", "subcategory")})
    return item


def _spec(repository: Path) -> dict[str, Any]:
    from visrec.export.triton_backends import imaging

    newest = max((p for p in (repository / "image_embedding").iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
    return imaging.load_spec(str(newest))


def _catalog_images(catalog: Path, n: int) -> list[bytes]:
    rows = [json.loads(line) for line in catalog.read_text().splitlines()[:n]]
    return [(catalog.parent / r["image"]).read_bytes() for r in rows]


async def _embed(triton_url: str, images: list[bytes]) -> np.ndarray:
    embedder = TritonEmbedder(triton_url, timeout_s=60)
    try:
        return await embedder.embed(images, model_version="1")
    finally:
        await embedder.close()


def _onnx_file(repository: Path) -> Path:
    found = sorted((repository / "image_encoder").glob("*/model.onnx"))
    if not found:  # gpu-tensorrt serves a plan: export the ONNX it was built from beside it
        found = sorted((repository / "image_encoder").glob("*/*.onnx"))
    if not found:
        raise SystemExit(f"no ONNX file under {repository / 'image_encoder'}")
    return found[-1]


def _catalog_vectors(triton_url: str, catalog: Path, out: Path) -> np.ndarray:
    """The real embeddings of the catalog (the base the scale test perturbs)."""
    cache = out / "catalog-vectors.npy"
    if cache.exists():
        return np.load(cache)
    embedder = TritonEmbedder(triton_url, timeout_s=300)
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]

    async def embed_all() -> np.ndarray:
        parts = []
        for i in range(0, len(rows), 32):
            images = [(catalog.parent / r["image"]).read_bytes() for r in rows[i:i + 32]]
            parts.append(await embedder.embed(images, model_version="1"))
        await embedder.close()
        return np.concatenate(parts)

    vectors = asyncio.run(embed_all())
    np.save(cache, vectors)
    return vectors


def _wait_healthy(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run([str(Path(sys.executable).parent / "visrec-healthcheck"),
                               "--address", address], capture_output=True, check=False)
        if proc.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"gateway at {address} not healthy")


if __name__ == "__main__":
    sys.exit(main())
