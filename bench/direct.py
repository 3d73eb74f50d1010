"""Direct Milvus searches for the same queries the gateway answers: what SimilarItems costs
without the gateway (the same two calls: fetch the item's vector, search its neighbours)."""

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
