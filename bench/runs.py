"""The benchmark's stages, one function each (``python -m bench --only NAME``): each takes the
run (its flags, results and stack) and puts what it measured into the results. ``STAGES`` is
the table ``__main__`` runs, in this order."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import ceiling, cpu, direct, load, paired, perf, scale, stages
from bench.results import Results
from bench.stack import BenchStack, baseline_checkout
from bench.stats import median
from bench.tune import tune
from visrec.export.indexing.ingest import ingest
from visrec.export.milvus import MilvusDatabase
from visrec.platform.triton_embedder import TritonEmbedder

ALONE = frozenset({"load generator"})  # this process: Triton, Milvus, gateway are its children


@dataclass
class Run:
    args: argparse.Namespace
    results: Results
    stack: BenchStack
    images: Path  # perf_analyzer's input data: the photos

    @property
    def interval_ms(self) -> int:
        return int(max(3.0, self.args.seconds / 2) * 1000)

    def item_ids(self) -> list[str]:
        return [json.loads(line)["id"] for line in self.stack.catalog.read_text().splitlines()]

    def queries(self, n: int = 200) -> list[str]:
        ids = self.item_ids()
        return [ids[i] for i in np.random.default_rng(0).choice(len(ids), n, replace=False)]


# ---------------------------------------------------------------------- Triton alone
def run_perf(run: Run) -> None:
    url, out, interval = run.stack.triton_address(), run.args.out, run.interval_ms
    server_pid = run.stack.triton_pid
    enc = []
    for batch in (1, 4, 8, 16):  # 4: the slice the encoder runs ORT on
        enc += perf.run("image_encoder", url, out / f"perf-image_encoder-b{batch}.csv",
                        concurrency=[1, 2, 4], batch=batch, shape="PIXELS:3,224,224",
                        interval_ms=interval, server_pid=server_pid)
    # The same with the tensors in shared memory: what the server does when the client does
    # not take the same 2 cores to serialise 16 x 600 KB per request.
    enc += perf.run("image_encoder", url, out / "perf-image_encoder-shm.csv", concurrency=[2, 4],
                    batch=16, shape="PIXELS:3,224,224", interval_ms=interval,
                    shared_memory=True, server_pid=server_pid)
    run.results.put("perf_image_encoder", enc)
    run.results.put("perf_image_embedding", perf.run(
        "image_embedding", url, out / "perf-image_embedding.csv",
        concurrency=[1, 2, 4, 8, 16, 32], input_data=run.images, interval_ms=interval,
        server_pid=server_pid))
    seconds = max(3.0, run.args.seconds / 2)
    onnx = _onnx_file(run.stack.repository)
    run.results.put("ceiling_onnxruntime", ceiling.onnxruntime_throughput(
        onnx, [1, 2, 4, 8, 16, 32, 64], seconds=seconds, gpu=run.args.target != "cpu"))
    if run.args.target == "cpu":  # the whole path in-process: this machine's CPU path
        spec = _spec(run.stack.repository)
        pngs = _catalog_images(run.stack.catalog, 64)
        run.results.put("stages_inprocess", {
            "photos (JPEG)": stages.stage_times(onnx, spec, perf.photos()),
            "catalog (PNG)": stages.stage_times(onnx, spec, pngs)})
        run.results.put("ceiling_whole_path", stages.ceiling(onnx, spec, perf.photos(),
                                                             seconds=seconds))


def run_tune(run: Run) -> None:
    if run.args.target != "cpu":
        return  # its knobs (ORT threads of the python backend) are the CPU's
    run.results.put("tuning", tune(run.stack.triton_address(), run.args.out, run.interval_ms,
                                   run.images))


# ---------------------------------------------------------------------- the gateway
def run_gateway(run: Run) -> None:
    stack, results, seconds = run.stack, run.results, run.args.seconds
    served = stack.ingested()
    results.put("ingest_server", {"images": served.embedded, "seconds": served.seconds,
                                  "images_per_s": served.images_per_s,
                                  "collection": served.collection,
                                  "model_version": served.model_version})
    gw = stack.gateway("gateway")
    queries = run.queries()
    users = asyncio.run(seed_users(gw.address, run.item_ids()))
    photos = perf.photos()
    collection, version, milvus, triton = (stack.collection, stack.model_version,
                                           stack.milvus_uri(), stack.triton_address())
    runs: dict[str, list[dict[str, Any]]] = {}
    stages_at_1: dict[str, dict[str, float]] = {}
    pids = {**stack.pids(), "load generator": os.getpid()}
    metrics_url = f"http://127.0.0.1:{gw.metrics_port}/metrics"
    for name, call, levels in (
        ("SimilarItems", load.similar_items(queries), [1, 4, 16]),
        ("Recommend", load.recommend(users), [1, 4, 16]),
        ("SearchByImage", load.search_by_image(photos), [1, 4, 8]),
    ):
        runs[name] = []
        for c in levels:
            before, cpu_before = stage_totals(metrics_url), cpu.snapshot(pids, ALONE)
            result = asyncio.run(load.closed_loop(gw.address, call, c, seconds))
            # warm-up requests count too: the CPU snapshot covers them
            result["cpu_ms_per_request"] = cpu.per_request_ms(
                cpu_before, cpu.snapshot(pids, ALONE),
                result["requests"] + result["warmup_requests"])
            runs[name].append(result)
            if c == 1:  # where a request has the gateway to itself
                stages_at_1[name] = stage_means(before, stage_totals(metrics_url))
    # The same Milvus calls without the gateway, right after the gateway's own runs and before
    # the upserts below (Milvus flushes and compacts after them for a while).
    results.put("direct_milvus_similar_items", direct.similar_items_direct(
        milvus, collection, queries, 10, seconds))
    vectors = asyncio.run(_embed(triton, photos, version))
    results.put("direct_milvus_search", direct.search_direct(milvus, collection, vectors, 10,
                                                             seconds))
    # What the direct baselines do not show: Milvus after an idle gap, SearchByImage's two calls
    # back to back without the gateway, a gRPC call that does nothing.
    results.put("milvus_search_after_idle", direct.search_after_idle(milvus, collection,
                                                                     vectors, 10))
    results.put("direct_search_by_image", direct.search_by_image_direct(
        triton, milvus, collection, photos, 10, seconds, model_version=version))
    results.put("grpc_floor", asyncio.run(load.grpc_floor(gw.address, seconds)))
    # The latency targets compare the gateway with its backends in interleaved rounds: the
    # machine drifts more in minutes than the gateway costs.
    short = max(1.0, seconds / 4)

    def gateway_p50(call: load.Call) -> float:
        return float(asyncio.run(load.closed_loop(gw.address, call, 1, short,
                                                  warmup_s=0.3))["p50_ms"])

    results.put("paired_similar_items", paired.rounds({
        "gateway": lambda: gateway_p50(load.similar_items(queries)),
        "direct": lambda: direct.similar_items_direct(milvus, collection, queries, 10,
                                                      short)["p50_ms"]}))
    results.put("paired_search_by_image", paired.rounds({
        "gateway": lambda: gateway_p50(load.search_by_image(photos)),
        "triton": lambda: direct.embed_direct(triton, photos, short,
                                              model_version=version)["p50_ms"],
        "search": lambda: direct.search_direct(milvus, collection, vectors, 10,
                                               short)["p50_ms"],
        "back to back": lambda: direct.search_by_image_direct(
            triton, milvus, collection, photos, 10, short, model_version=version)["p50_ms"]}))
    # Triton's bytes -> vector at 1 in flight under the same conditions (Milvus and the gateway
    # up and idling, as during SearchByImage): the other half of its target.
    results.put("direct_triton_embedding", perf.run(
        "image_embedding", triton, run.args.out / "perf-image_embedding-stack.csv",
        concurrency=[1], input_data=run.images, interval_ms=run.interval_ms)[0])
    runs["SimilarItems open loop"] = [
        asyncio.run(load.open_loop(gw.address, load.similar_items(queries), r, seconds))
        for r in (50, 100, 150, 200, 300)]
    results.put("gateway", runs)
    # Online catalog changes: the catalog's images as new items, 32 per stream.
    rows = [json.loads(line) for line in stack.catalog.read_text().splitlines()[:512]]
    fresh = [(pb_item(f"bench-upsert-{n}", r), (stack.catalog.parent / r["image"]).read_bytes())
             for n, r in enumerate(rows)]
    upserts = [asyncio.run(load.upserts(gw.address, fresh, streams=s, batch=32, seconds=seconds))
               for s in (4, 8)]
    results.put("upsert", max(upserts, key=lambda r: r["items_per_s"]))
    results.put("upsert_runs", upserts)
    results.put("stages_ms", stages_at_1)
    stack.stop_gateway("gateway")  # its background refreshes would disturb what follows


def run_compare(run: Run) -> None:
    """This checkout's gateway and ``--baseline``'s, over the same stack, in interleaved
    rounds: CPU per request of each gateway process, p50 and throughput, at 1 and 16 in
    flight; each ratio is the median of the rounds' own ratios."""
    if not run.args.baseline:
        raise SystemExit("--only compare needs --baseline REF (e.g. a commit of main)")
    root, sha = baseline_checkout(run.args.baseline, run.args.out / "baseline")
    stack, seconds = run.stack, run.args.seconds
    sides = {"change": stack.gateway("change"), "baseline": stack.gateway("baseline", root)}
    users = asyncio.run(seed_users(sides["change"].address, run.item_ids()))
    queries = run.queries()
    rows = []
    for rpc, call in (("SimilarItems", load.similar_items(queries)),
                      ("Recommend", load.recommend(users))):
        for c in (1, 16):
            per: dict[str, dict[str, list[float]]] = {s: {"cpu_ms": [], "p50_ms": [],
                                                          "rps": []} for s in sides}
            for r in range(run.args.rounds):
                for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    gw = sides[side]
                    before = cpu.snapshot({side: gw.process.pid})
                    result = asyncio.run(load.closed_loop(gw.address, call, c, seconds))
                    spent = cpu.per_request_ms(before, cpu.snapshot({side: gw.process.pid}),
                                               result["requests"] + result["warmup_requests"])
                    per[side]["cpu_ms"].append(spent[side])
                    per[side]["p50_ms"].append(result["p50_ms"])
                    per[side]["rps"].append(result["throughput_rps"])
            rows.append({"rpc": rpc, "concurrency": c, **per,
                         "cpu_ratio": median([a / b for a, b in zip(
                             per["change"]["cpu_ms"], per["baseline"]["cpu_ms"], strict=True)]),
                         "rps_ratio": median([a / b for a, b in zip(
                             per["change"]["rps"], per["baseline"]["rps"], strict=True)])})
    run.results.put("compare", {"baseline": run.args.baseline, "baseline_commit": sha,
                                "seconds": seconds, "rounds": run.args.rounds, "rows": rows})
    stack.stop_gateway("change")
    stack.stop_gateway("baseline")


# ---------------------------------------------------------------------- batch and scale
def run_ingest(run: Run) -> None:
    db = run.args.out / f"ingest-{uuid.uuid4().hex[:6]}.db"
    lite = MilvusDatabase(str(db), timeout_s=60)
    embedder = TritonEmbedder(run.stack.triton_address(), timeout_s=300)
    r = asyncio.run(ingest(run.stack.catalog, lite.admin, lite.items, embedder, progress=False))
    lite.close_sync()
    run.results.put("ingest", {"images": r.embedded, "seconds": r.seconds,
                               "images_per_s": r.images_per_s})


def run_scale(run: Run) -> None:
    base = _catalog_vectors(run.stack, run.args.out)
    sizes = [int(s) for s in run.args.scale.split(",") if s]
    backends = set(filter(None, run.args.scale_backends.split(",")))
    rows = []
    if "lite" in backends:
        rows += scale.run(str(run.args.out / "scale-lite.db"), "lite", base, sizes,
                          shape=run.args.scale_data)
    if "server" in backends:
        rows += scale.run(run.stack.milvus_uri(), "server", base, sizes,
                          shape=run.args.scale_data)
    run.results.put("scale", rows)


STAGES: dict[str, Callable[[Run], None]] = {
    "perf": run_perf,        # perf_analyzer on each model, ONNX Runtime's ceiling, stages
    "tune": run_tune,        # the CPU knobs of the Triton models, before / after
    "gateway": run_gateway,  # every RPC through the gateway, its direct baselines, UpsertItems
    "compare": run_compare,  # this checkout's gateway beside --baseline's
    "ingest": run_ingest,    # batch ingest into Milvus Lite
    "scale": run_scale,      # ANN recall and latency as the collection grows
}
DEFAULT = ("perf", "tune", "gateway", "ingest", "scale")  # compare needs --baseline


# ---------------------------------------------------------------------- helpers
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


async def _embed(triton_url: str, images: list[bytes], version: str) -> np.ndarray:
    embedder = TritonEmbedder(triton_url, timeout_s=60)
    try:
        return await embedder.embed(images, model_version=version)
    finally:
        await embedder.close()


def _onnx_file(repository: Path) -> Path:
    found = sorted((repository / "image_encoder").glob("*/model.onnx"))
    if not found:  # gpu-tensorrt serves a plan: export the ONNX it was built from beside it
        found = sorted((repository / "image_encoder").glob("*/*.onnx"))
    if not found:
        raise SystemExit(f"no ONNX file under {repository / 'image_encoder'}")
    return found[-1]


def _catalog_vectors(stack: BenchStack, out: Path) -> np.ndarray:
    """The real embeddings of the catalog by the served version (what the scale test
    perturbs)."""
    version = stack.served_version()
    cache = out / f"catalog-vectors-v{version}.npy"
    if cache.exists():
        return np.load(cache)
    rows = [json.loads(line) for line in stack.catalog.read_text().splitlines()]

    async def embed_all() -> np.ndarray:
        embedder = TritonEmbedder(stack.triton_address(), timeout_s=300)
        parts = []
        for i in range(0, len(rows), 32):
            images = [(stack.catalog.parent / r["image"]).read_bytes() for r in rows[i:i + 32]]
            parts.append(await embedder.embed(images, model_version=version))
        await embedder.close()
        return np.concatenate(parts)

    vectors = asyncio.run(embed_all())
    np.save(cache, vectors)
    return vectors
