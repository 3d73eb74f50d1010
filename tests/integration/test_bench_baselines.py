"""The benchmark's direct baselines against the real stack: they must make the gateway's own
Milvus calls (the latency targets divide by them) and run against real Triton and Milvus."""

from __future__ import annotations

import asyncio

from bench import direct, perf
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb

APPLE = "google:1f34e"


async def test_direct_baselines_find_what_the_gateway_finds(stub, controls, triton,
                                                             milvus_lite_uri):
    db = controls[0]
    index = await db.store.active_index()
    assert index is not None

    # SimilarItems' two calls as the baseline makes them: the gateway's neighbours, in order
    def direct_neighbours() -> list[str]:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=milvus_lite_uri)
        try:
            lookup, search = direct._gateway_calls(client, index.collection, 10)
            hits = search(lookup(APPLE)[0]["vector"], 11)[0]
            return [h["id"] for h in hits if h["id"] != APPLE][:10]
        finally:
            client.close()

    reply = await stub.SimilarItems(pb.SimilarItemsRequest(item_id=APPLE, k=10))
    assert reply.model_version == index.model_version
    assert await asyncio.to_thread(direct_neighbours) == [h.item.id for h in reply.items]

    # the timed loops run against the real servers and report what the report reads
    photos = perf.photos()[:2]
    similar = await asyncio.to_thread(direct.similar_items_direct, milvus_lite_uri,
                                      index.collection, [APPLE, "twitter:1f34e"], 10, 0.3)
    embed = await asyncio.to_thread(direct.embed_direct, triton.grpc_url, photos, 0.3,
                                    index.model_version)
    both = await asyncio.to_thread(direct.search_by_image_direct, triton.grpc_url,
                                   milvus_lite_uri, index.collection, photos, 10, 0.3,
                                   index.model_version)
    idle = await asyncio.to_thread(direct.search_after_idle, milvus_lite_uri, index.collection,
                                   [[1.0] * index.dim], 10, (0, 2), 3)
    assert [r["gap_ms"] for r in idle] == [0.0, 2.0] and all(r["p50_ms"] > 0 for r in idle)
    for r in (similar, embed, both):
        assert r["requests"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert 0 < both["embed_p50_ms"] < both["p50_ms"] and 0 < both["search_p50_ms"] < both["p50_ms"]
    assert both["hits_per_search"] == 10  # each embedding really was searched, with k
