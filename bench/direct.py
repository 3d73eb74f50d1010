"""Direct Milvus calls for the same queries the gateway answers: what SimilarItems costs without
the gateway (the same two calls: fetch the item's vector, search its neighbours), and what
SearchByImage's search costs (one search for an embedded photo)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from bench.stats import percentiles


def similar_items_direct(uri: str, collection: str, item_ids: Sequence[str], k: int,
                         seconds: float) -> dict[str, Any]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    fields = ["id", "name", "category", "subcategory", "image_uri", "attributes"]
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        item = item_ids[i % len(item_ids)]
        i += 1
        t = time.perf_counter()
        rows = client.query(collection, filter=f"id in [{json.dumps(item)}]",
                            output_fields=["vector"])
        client.search(collection, data=[rows[0]["vector"]], anns_field="vector", limit=k + 1,
                      output_fields=fields, search_params={"metric_type": "COSINE"})
        latencies.append(time.perf_counter() - t)
    client.close()
    return {"requests": len(latencies), "throughput_rps": len(latencies) / seconds,
            **percentiles(latencies)}


def search_direct(uri: str, collection: str, vectors: Any, k: int,
                  seconds: float) -> dict[str, Any]:
    """The search SearchByImage makes after embedding: the same fields and search params."""
    from pymilvus import MilvusClient

    from visrec.gateway.adapters.milvus import schema

    client = MilvusClient(uri=uri)
    data = [[float(x) for x in v] for v in vectors]
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t = time.perf_counter()
        client.search(collection, data=[data[i % len(data)]], anns_field="vector", limit=k,
                      output_fields=schema.ITEM_FIELDS, search_params=schema.search_params(k))
        latencies.append(time.perf_counter() - t)
        i += 1
    client.close()
    return {"requests": len(latencies), "throughput_rps": len(latencies) / seconds,
            **percentiles(latencies)}
