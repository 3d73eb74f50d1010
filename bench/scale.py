"""ANN at scale: insert rate, search latency and recall@10 against exact search as a collection
of vectors of the real dimension grows (10k, 100k, 1M), on Milvus Lite and on a Milvus server.

Two shapes of data, both from the catalog's real embeddings (the served dimension), generated
chunk by chunk from seeds, so exact search at 1M never needs all of them in memory at once:

- ``mixtures`` (the default): each vector a random point on the segment between two real
  embeddings, plus Gaussian noise of norm ~0.35, re-normalised. A continuum that fills the
  space between catalog items, as a large catalog of in-between items would: neighbours are
  close together and many, the hard case for an approximate index.
- ``clusters``: one real embedding plus the same noise: tight clusters around ~4k points, which
  any index searches well (recall 1.000 at 1M on the server): kept for comparison.

Each row also gives the median cosine similarity of a query's exact 1st and 10th neighbours:
how crowded the neighbourhood the index must sort out is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from bench.stats import percentiles

CHUNK = 5000
INSERT_BATCH = 500


SHAPES = ("mixtures", "clusters")


def _chunk(base: np.ndarray, index: int, noise: float, seed: int,
           shape: str = "mixtures") -> np.ndarray:
    if shape not in SHAPES:
        raise ValueError(f"data shape must be one of {SHAPES}, not {shape!r}")
    rng = np.random.default_rng(seed * 1_000_003 + index)
    picks = rng.integers(0, len(base), CHUNK)
    v = base[picks]
    if shape == "mixtures":
        t = rng.uniform(0.0, 1.0, (CHUNK, 1)).astype(np.float32)
        v = (1.0 - t) * v + t * base[rng.integers(0, len(base), CHUNK)]
    # noise of norm ~``noise`` whatever the dimension: points stay near the real ones
    scale = noise / math.sqrt(base.shape[1])
    v = v + scale * rng.standard_normal((CHUNK, base.shape[1])).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def chunks(base: np.ndarray, n: int, noise: float = 0.35, seed: int = 0,
           shape: str = "mixtures") -> Iterator[tuple[int, np.ndarray]]:
    for i in range(math.ceil(n / CHUNK)):
        v = _chunk(base, i, noise, seed, shape)
        yield i * CHUNK, v[: min(CHUNK, n - i * CHUNK)]


def exact_topk(base: np.ndarray, n: int, queries: np.ndarray, k: int,
               noise: float = 0.35, seed: int = 0, shape: str = "mixtures") -> np.ndarray:
    """Ids (row numbers) of the exact top-k by inner product (vectors are unit length)."""
    return exact_topk_scored(base, n, queries, k, noise, seed, shape)[0]


def exact_topk_scored(base: np.ndarray, n: int, queries: np.ndarray, k: int,
                      noise: float = 0.35, seed: int = 0, shape: str = "mixtures"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``exact_topk`` and the similarities, each row sorted best first."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for offset, v in chunks(base, n, noise, seed, shape):
        s = queries @ v.T
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.arange(offset, offset + len(v))[None, :].repeat(
            len(queries), 0)], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_i = np.take_along_axis(cand_i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)


def run(uri: str, backend: str, base: np.ndarray, sizes: list[int], *, queries: int = 200,
        k: int = 10, seed: int = 0, shape: str = "mixtures") -> list[dict[str, Any]]:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=uri)
    dim = base.shape[1]
    name = f"scale_{dim}_{backend}"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    params = client.prepare_index_params()
    if backend == "lite":
        index = {"index_type": "IVF_FLAT", "params": {"nlist": 1024}}
        search = {"metric_type": "COSINE", "params": {"nprobe": 64}}
    else:
        index = {"index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
        search = {"metric_type": "COSINE", "params": {"ef": 128}}
    params.add_index("vector", metric_type="COSINE", **index)
    client.create_collection(name, schema=schema, index_params=params)
    q = _chunk(base, 10**6, 0.35, seed + 1, shape)[:queries]  # held out: never inserted
    results: list[dict[str, Any]] = []
    inserted = 0
    for size in sorted(sizes):
        t = time.perf_counter()
        for offset, v in chunks(base, size, seed=seed, shape=shape):
            if offset + len(v) <= inserted:
                continue
            start = max(0, inserted - offset)
            # Milvus Lite inserts ~1,200 1280-d rows/s in batches of <= 500, ~100/s in
            # batches of 2,000 or more: keep batches small.
            for lo in range(start, len(v), INSERT_BATCH):
                rows = [{"id": offset + j, "vector": v[j].tolist()}
                        for j in range(lo, min(lo + INSERT_BATCH, len(v)))]
                client.insert(name, rows)
        insert_s = time.perf_counter() - t
        added = size - inserted
        inserted = size
        t = time.perf_counter()
        client.flush(name)
        if backend != "lite":  # Lite indexes as it flushes and reports 0 indexed rows
            _wait_indexed(client, name, size)
        index_s = time.perf_counter() - t
        client.load_collection(name)
        # One Strong search waits until the server has consumed every insert; after it the
        # timed searches ask for no wait (Eventually) and still see all the vectors. (Strong
        # on each search would time the server's ~200 ms time tick, not the search.)
        client.search(name, data=[q[0].tolist()], limit=k, search_params=search,
                      anns_field="vector", consistency_level="Strong")
        latencies, found = [], []
        for vec in q:
            t = time.perf_counter()
            hits = client.search(name, data=[vec.tolist()], limit=k, search_params=search,
                                 anns_field="vector", consistency_level="Eventually")[0]
            latencies.append(time.perf_counter() - t)
            found.append([h["id"] for h in hits])
        exact, similarity = exact_topk_scored(base, size, q, k, seed=seed, shape=shape)
        recall = float(np.mean([len(set(f) & set(e.tolist())) / k
                                for f, e in zip(found, exact, strict=True)]))
        results.append({"backend": backend, "vectors": size, "dim": dim, "data": shape,
                        "nn1_similarity": float(np.median(similarity[:, 0])),
                        f"nn{k}_similarity": float(np.median(similarity[:, k - 1])),
                        "index": index["index_type"], "index_params": index["params"],
                        "search_params": search["params"],
                        "insert_vectors_per_s": added / insert_s if insert_s else float("nan"),
                        "flush_and_index_s": index_s, f"recall@{k}": recall,
                        **percentiles(latencies)})
    client.drop_collection(name)
    client.close()
    return results


def _wait_indexed(client: Any, name: str, total: int, timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.describe_index(name, "vector")
        indexed = int(info.get("indexed_rows", total))
        if indexed >= total and int(info.get("pending_index_rows", 0)) == 0:
            return
        time.sleep(1.0)
