"""Direct calls for the same work the gateway does, made by one client without the gateway:
what SimilarItems costs in Milvus (the same two calls: fetch the item's vector, search its
neighbours, with the gateway's filter, fields, search parameters and consistency), what
SearchByImage costs without the gateway (embed in Triton, then the same search, back to back),
and how Milvus' own latency depends on how long it was idle before a call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench.stats import median, percentiles


def _gateway_calls(client: Any, collection: str, k: int) -> tuple[Any, Any]:
    """The lookup and the search exactly as the gateway's Milvus adapter makes them."""
    from visrec.platform.milvus import schema
    from visrec.platform.milvus.expr import compile_filter
    from visrec.platform.milvus.serving import READS, in_ids

    def lookup(item_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = client.query(
            collection, filter=in_ids([item_id]), output_fields=["vector"],
            consistency_level=READS)
        return rows

    def search(vector: Sequence[float], limit: int = k) -> Any:
        data = [np.asarray(vector, dtype=np.float32)]
        return client.search(collection, data=data, anns_field="vector", limit=limit,
                             filter=compile_filter(()), output_fields=schema.ITEM_FIELDS,
                             search_params=schema.search_params(limit), consistency_level=READS)

    return lookup, search


def similar_items_direct(uri: str, collection: str, item_ids: Sequence[str], k: int,
                         seconds: float) -> dict[str, Any]:
    """SimilarItems' two Milvus calls back to back, one request after another."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    lookup, search = _gateway_calls(client, collection, k)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        item = item_ids[i % len(item_ids)]
        i += 1
        t = time.perf_counter()
        rows = lookup(item)
        search(rows[0]["vector"], k + 1)  # the item itself comes back first
        latencies.append(time.perf_counter() - t)
    client.close()
    return {"requests": len(latencies), "throughput_rps": len(latencies) / seconds,
            **percentiles(latencies)}


def search_direct(uri: str, collection: str, vectors: Any, k: int,
                  seconds: float) -> dict[str, Any]:
    """The search SearchByImage makes after embedding, one after another."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    _, search = _gateway_calls(client, collection, k)
    data = [[float(x) for x in v] for v in vectors]
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t = time.perf_counter()
        search(data[i % len(data)])
        latencies.append(time.perf_counter() - t)
        i += 1
    client.close()
    return {"requests": len(latencies), "throughput_rps": len(latencies) / seconds,
            **percentiles(latencies)}


def search_after_idle(uri: str, collection: str, vectors: Any, k: int,
                      gaps_ms: Sequence[float] = (0, 0.5, 1, 3, 10),
                      calls: int = 150) -> list[dict[str, float]]:
    """p50 of one search after the client slept ``gap`` ms (nothing else asking Milvus). A
    search issued right after another is faster than one issued after the machine idled:
    threads park and cores sleep, the client's and the server's alike. Behind the gateway
    Milvus always sees such gaps (the request's trip through the gateway, the embedding before
    SearchByImage's search)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    _, search = _gateway_calls(client, collection, k)
    data = [[float(x) for x in v] for v in vectors]
    latencies: dict[float, list[float]] = {gap: [] for gap in gaps_ms}
    for i in range(calls * len(gaps_ms)):  # the gaps take turns: drift touches all alike
        gap = gaps_ms[i % len(gaps_ms)]
        if gap:
            time.sleep(gap / 1000)
        t = time.perf_counter()
        search(data[i % len(data)])
        latencies[gap].append(time.perf_counter() - t)
    client.close()
    return [{"gap_ms": float(gap), "p50_ms": median(v) * 1000} for gap, v in latencies.items()]


def _embed_then(triton_url: str, images: Sequence[bytes], seconds: float, model_version: str,
                after: Callable[[list[float]], Any] | None = None
                ) -> tuple[list[float], list[float], list[float]]:
    """Embed one image after another with the gateway's own Triton client, each followed by
    ``after(vector)`` when given; seconds per request in total, for the embedding, for after."""
    from visrec.platform.triton_embedder import TritonEmbedder

    async def run() -> tuple[list[float], list[float], list[float]]:
        embedder = TritonEmbedder(triton_url)
        total: list[float] = []
        embed: list[float] = []
        rest: list[float] = []
        try:
            end = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                vector = await embedder.embed([images[i % len(images)]],
                                              model_version=model_version)
                t1 = time.perf_counter()
                if after is not None:
                    after(np.asarray(vector[0], dtype=np.float32).tolist())
                t2 = time.perf_counter()
                total.append(t2 - t0)
                embed.append(t1 - t0)
                rest.append(t2 - t1)
                i += 1
        finally:
            await embedder.close()
        return total, embed, rest

    return asyncio.run(run())


def embed_direct(triton_url: str, images: Sequence[bytes], seconds: float,
                 model_version: str) -> dict[str, Any]:
    """Triton's bytes -> vector through the gateway's own Triton client, one image after
    another (what SearchByImage's embed stage waits for, without the gateway)."""
    latencies = _embed_then(triton_url, images, seconds, model_version)[0]
    return {"requests": len(latencies), **percentiles(latencies)}


def search_by_image_direct(triton_url: str, uri: str, collection: str, images: Sequence[bytes],
                           k: int, seconds: float, model_version: str) -> dict[str, Any]:
    """SearchByImage's work without the gateway: embed the photo in Triton (the gateway's own
    Triton client), then the same Milvus search, back to back, one request after another."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    _, search = _gateway_calls(client, collection, k)
    hits: list[int] = []

    def search_counted(vector: list[float]) -> None:
        hits.append(len(search(vector)[0]))

    try:
        total, embed, ann = _embed_then(triton_url, images, seconds, model_version,
                                        search_counted)
    finally:
        client.close()
    return {"requests": len(total), **percentiles(total),
            "embed_p50_ms": median(embed) * 1000, "search_p50_ms": median(ann) * 1000,
            "hits_per_search": median(hits)}
