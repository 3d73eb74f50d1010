"""Gateway load generator (async gRPC): closed loop at a fixed concurrency, or open loop at a
fixed arrival rate, for a bounded time. Latency is measured per request from send to answer;
in the open loop from the scheduled send time, so queueing in the client counts."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from bench.stats import percentiles
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

Call = Callable[[pb_grpc.RecommenderStub, int], Any]


def similar_items(item_ids: Sequence[str], k: int = 10) -> Call:
    def call(stub: pb_grpc.RecommenderStub, i: int) -> Any:
        return stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_ids[i % len(item_ids)],
                                                        k=k), timeout=30)
    return call


def recommend(user_ids: Sequence[str], k: int = 10) -> Call:
    def call(stub: pb_grpc.RecommenderStub, i: int) -> Any:
        return stub.Recommend(pb.RecommendRequest(user_id=user_ids[i % len(user_ids)], k=k),
                              timeout=30)
    return call


def search_by_image(images: Sequence[bytes], k: int = 10) -> Call:
    def call(stub: pb_grpc.RecommenderStub, i: int) -> Any:
        return stub.SearchByImage(pb.SearchByImageRequest(image=images[i % len(images)], k=k),
                                  timeout=60)
    return call


def _summary(kind: str, level: float, latencies: list[float], errors: list[str],
             seconds: float) -> dict[str, Any]:
    return {"mode": kind, "level": level, "requests": len(latencies), "errors": len(errors),
            "error_samples": sorted(set(errors))[:3], "throughput_rps": len(latencies) / seconds,
            **percentiles(latencies)}


async def closed_loop(address: str, call: Call, concurrency: int, seconds: float,
                      warmup_s: float = 1.0) -> dict[str, Any]:
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    warmup = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        start = time.perf_counter()
        measure_from, end = start + warmup_s, start + warmup_s + seconds

        async def worker() -> None:
            nonlocal warmup
            while (now := time.perf_counter()) < end:
                try:
                    await call(stub, next(counter))
                    if now >= measure_from:
                        latencies.append(time.perf_counter() - now)
                    else:
                        warmup += 1
                except grpc.aio.AioRpcError as e:
                    if now >= measure_from:
                        errors.append(f"{e.code().name}: {e.details()}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = _summary("closed", concurrency, latencies, errors, seconds)
    result["warmup_requests"] = warmup
    return result


async def grpc_floor(address: str, seconds: float) -> dict[str, Any]:
    """grpc.health.v1 Check at 1 in flight: what any call through the gateway pays before it
    does any work (client and server gRPC stacks, both in Python, the interceptors, loopback)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies.append(time.perf_counter() - now)
    return _summary("closed", 1, latencies, [], seconds)


async def open_loop(address: str, call: Call, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        start = time.perf_counter()
        n = int(rate * seconds)

        async def one(i: int) -> None:
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                await call(stub, i)
                latencies.append(time.perf_counter() - scheduled)
            except grpc.aio.AioRpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")

        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = max(seconds, time.perf_counter() - start)
    result = _summary("open", rate, latencies, errors, elapsed)
    result["offered_rps"] = rate
    return result


async def upserts(address: str, items: Sequence[tuple[pb.Item, bytes]], streams: int,
                  batch: int, seconds: float) -> dict[str, Any]:
    """UpsertItems at ``streams`` concurrent streams of ``batch`` items each, for ``seconds``:
    items per second (each upsert embeds its image through Triton and writes Milvus)."""
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    upserted = 0
    async with grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal upserted
            while (now := time.perf_counter()) < end:
                chunk = [items[next(counter) % len(items)] for _ in range(batch)]

                async def stream(chunk=chunk):
                    for item, image in chunk:
                        yield pb.UpsertItemsRequest(item=item, image=image)

                try:
                    reply = await stub.UpsertItems(stream(), timeout=120)
                    upserted += reply.upserted
                    latencies.append(time.perf_counter() - now)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        elapsed = time.perf_counter() - start
    result = _summary("closed", streams, latencies, errors, elapsed)
    result.update(batch=batch, items=upserted, items_per_s=upserted / elapsed)
    return result
