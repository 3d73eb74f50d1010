"""The benchmark's own logic: the streamed exact search it scores recall against, the target
table, and the load generator against a real gRPC server (in-memory adapters)."""

import numpy as np
import pytest

from bench import load, paired, report, scale


@pytest.mark.parametrize("shape", scale.SHAPES)
def test_streamed_exact_topk_equals_brute_force_over_all_vectors(shape):
    base = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    n = scale.CHUNK * 2 + 123  # crosses chunk boundaries, last chunk partial
    everything = np.concatenate([v for _, v in scale.chunks(base, n, shape=shape)])
    assert everything.shape == (n, 16)
    assert np.allclose(np.linalg.norm(everything, axis=1), 1.0, atol=1e-5)
    queries = scale._chunk(base, 10**6, 0.35, 1, shape)[:7]
    got, similarity = scale.exact_topk_scored(base, n, queries, 10, shape=shape)
    want = np.argsort(-(queries @ everything.T), axis=1)[:, :10]
    for g, w in zip(got, want, strict=True):
        assert set(g.tolist()) == set(w.tolist())
    # best first, and the similarities are those of the ids
    assert np.all(np.diff(similarity, axis=1) <= 0)
    assert np.allclose(similarity, np.take_along_axis(queries @ everything.T, got, 1), atol=1e-5)


def test_mixtures_fill_the_space_between_real_points_and_clusters_do_not():
    base = np.eye(8, dtype=np.float32)  # 8 orthogonal "real" embeddings
    clusters = scale._chunk(base, 0, 0.0, 0, "clusters")
    mixtures = scale._chunk(base, 0, 0.0, 0, "mixtures")
    # without noise a cluster point is a real point; a mixture mostly lies between two
    assert np.allclose(clusters.max(axis=1), 1.0)
    between = (mixtures > 1e-6).sum(axis=1)
    assert np.all(between <= 2) and np.mean(between == 2) > 0.8  # 7 / 8 pick two points
    assert np.all((clusters > 1e-6).sum(axis=1) == 1)
    with pytest.raises(ValueError, match="mixtures"):
        scale._chunk(base, 0, 0.35, 0, "uniform")


def test_chunks_are_deterministic_and_growing_a_collection_only_appends():
    base = np.eye(8, dtype=np.float32)
    small = np.concatenate([v for _, v in scale.chunks(base, 7000)])
    large = np.concatenate([v for _, v in scale.chunks(base, 12000)])
    assert np.array_equal(small, large[:7000])


def _results(enc: float, pipe: float, ceiling: float, whole: float, gw_p50: float,
             direct_p50: float, by_image_p50: float, ingest: float,
             recall_1m: float | None) -> dict:
    scale_rows = [{"backend": "server", "vectors": 100_000, "recall@10": 0.99,
                   "index_params": {}, "search_params": {}}]
    if recall_1m is not None:
        scale_rows.append({"backend": "server", "vectors": 1_000_000, "recall@10": recall_1m,
                           "index_params": {"M": 16}, "search_params": {"ef": 64}})
    return {
        "perf_image_encoder": [{"images_per_s": enc / 2, "Concurrency": 4.0},
                               {"images_per_s": enc, "Concurrency": 2.0,
                                "shared_memory": True}],
        # concurrency 1 is the latency the SearchByImage target adds up; 16 the best rate
        "perf_image_embedding": [{"images_per_s": pipe / 3, "Concurrency": 1.0,
                                  "p50 latency": 12_000.0},
                                 {"images_per_s": pipe, "Concurrency": 16.0,
                                  "p50 latency": 90_000.0}],
        "ceiling_onnxruntime": [{"images_per_s": ceiling}, {"images_per_s": ceiling / 3}],
        "ceiling_whole_path": {"best": {"images_per_s": whole}},
        "gateway": {"SimilarItems": [{"level": 4, "p50_ms": 99.0},
                                     {"level": 1, "p50_ms": gw_p50}],
                    "SearchByImage": [{"level": 8, "p50_ms": 500.0},
                                      {"level": 1, "p50_ms": by_image_p50}]},
        "direct_milvus_similar_items": {"p50_ms": direct_p50},
        "direct_milvus_search": {"p50_ms": 8.0},
        "ingest": {"images_per_s": ingest},
        "scale": scale_rows,
    }


def test_targets_compare_best_throughputs_and_the_single_client_latency():
    rows = report.ratios(_results(90, 70, 100, 80, 13, 10, 24, 60, 0.97))
    measured = {name: (round(value, 3), met) for name, value, _, met, _ in rows}
    assert list(measured.values()) == [(0.9, True), (0.875, True), (1.3, True), (1.2, True),
                                       (0.857, True), (0.97, True)]
    assert "(tensors in shared memory)" in rows[0][4]
    assert rows[3][4] == "24.00 / (12.00 + 8.00) ms"  # Triton p50 at 1 in flight, not at 16
    # measured with the stack up, Triton's p50 is the one the target adds up
    stack = {**_results(90, 70, 100, 80, 13, 10, 24, 60, 0.97),
             "direct_triton_embedding": {"p50 latency": 14_000.0}}
    assert report.ratios(stack)[3][4] == "24.00 / (14.00 + 8.00) ms"
    # the same two calls without the gateway are named beside the target's own sum
    both = {**stack, "direct_search_by_image": {"p50_ms": 20.0, "embed_p50_ms": 15.0,
                                                "search_p50_ms": 5.0}}
    assert report.ratios(both)[3][4].endswith("without the gateway: 20.00 ms (1.20 x)")
    rows = report.ratios(_results(80, 50, 100, 80, 14, 10, 25, 30, None))
    assert [met for *_, met, _ in rows] == [False, False, False, False, False, None]
    assert "at 100,000: 0.990" in rows[-1][4]


@pytest.fixture
def gateway_address(served) -> str:
    return f"127.0.0.1:{served[0].port}"


async def test_closed_loop_counts_answers_and_names_errors(gateway_address):
    ok = await load.closed_loop(gateway_address, load.similar_items(["i0", "i1"], k=3),
                                concurrency=2, seconds=0.5, warmup_s=0.1)
    assert ok["requests"] > 0 and ok["errors"] == 0
    assert 0 < ok["p50_ms"] <= ok["p99_ms"]
    bad = await load.closed_loop(gateway_address, load.similar_items(["no-such-item"]),
                                 concurrency=1, seconds=0.3, warmup_s=0.0)
    assert bad["requests"] == 0 and bad["errors"] > 0
    assert bad["error_samples"][0].startswith("NOT_FOUND")


def test_paired_rounds_interleave_the_measures_and_take_each_ones_median():
    calls: list[str] = []

    def measure(name: str, values: list[float]):
        def run() -> float:
            calls.append(name)
            return values[sum(c == name for c in calls) - 1]
        return run

    r = paired.rounds({"gateway": measure("gateway", [9.0, 5.0, 6.0]),
                       "direct": measure("direct", [4.0, 3.0, 100.0])}, n=3)
    # side by side, round after round; each round starts with the next measure
    assert calls == ["gateway", "direct", "direct", "gateway", "gateway", "direct"]
    assert r["p50_ms"] == {"gateway": 6.0, "direct": 4.0} and r["rounds"] == 3
    assert r["per_round_ms"]["direct"] == [4.0, 3.0, 100.0]
    # the paired ratio: median of each round's own ratio (9/4, 5/3, 6/100)
    assert paired.ratio(r, "gateway", "direct") == 5.0 / 3.0
    assert paired.ratio(r, "gateway", "direct", "gateway") == 5.0 / 8.0
    with pytest.raises(ValueError):
        paired.rounds({"x": lambda: 1.0}, n=0)


def test_latency_targets_take_the_interleaved_medians_when_measured(tmp_path):
    data = {**_results(90, 70, 100, 80, 13, 10, 24, 60, 0.97),
            "paired_similar_items": {"rounds": 2, "p50_ms": {"gateway": 5.0, "direct": 4.0},
                                     "per_round_ms": {"gateway": [5.0, 5.0],
                                                      "direct": [4.0, 4.0]}},
            "paired_search_by_image": {"rounds": 2, "p50_ms": {
                "gateway": 18.0, "triton": 12.0, "search": 3.0, "back to back": 16.0},
                "per_round_ms": {"gateway": [18.0, 18.0], "triton": [12.0, 12.0],
                                 "search": [3.0, 3.0], "back to back": [16.0, 16.0]}}}
    rows = {name: (round(value, 3), met, how) for name, value, _, met, how in
            report.ratios(data)}
    similar = rows[report.TARGETS[2][0]]
    assert similar[:2] == (1.25, True) and "2 interleaved rounds" in similar[2]
    by_image = rows[report.TARGETS[3][0]]
    assert by_image[:2] == (1.2, True)
    assert "18.00 / (12.00 + 3.00) ms" in by_image[2] and "16.00 ms (1.12 x)" in by_image[2]
    text = report.write({"gateway": {}, **{k: v for k, v in data.items() if "paired" in k}},
                        tmp_path).read_text()
    assert "| back to back | 16.00 | 16.00 | 16.00 |" in text


async def test_grpc_floor_times_a_health_check_through_the_gateway(gateway_address):
    r = await load.grpc_floor(gateway_address, seconds=0.3)
    assert r["requests"] > 0 and r["errors"] == 0 and 0 < r["p50_ms"] <= r["p99_ms"]


def test_the_report_shows_what_the_direct_baselines_do_not(tmp_path):
    data = {"gateway": {}, "grpc_floor": {"p50_ms": 0.45},
            "milvus_search_after_idle": [{"gap_ms": 0.0, "p50_ms": 1.8},
                                         {"gap_ms": 3.0, "p50_ms": 3.3}],
            "direct_search_by_image": {"p50_ms": 17.1, "embed_p50_ms": 13.4,
                                       "search_p50_ms": 3.7}}
    text = report.write(data, tmp_path).read_text()
    assert "p50 0.45 ms" in text
    assert "| idle before the call | 0 ms | 3 ms |" in text and "| 1.80 | 3.30 |" in text
    assert "p50 17.10 ms; embed p50 13.40, search p50 3.70 ms" in text


async def test_open_loop_sends_the_offered_rate_and_measures_from_schedule(gateway_address):
    r = await load.open_loop(gateway_address, load.similar_items(["i0"], k=2), rate=40,
                             seconds=0.5)
    assert r["requests"] + r["errors"] == 20 and r["offered_rps"] == 40
    assert r["errors"] == 0


def test_cpu_seconds_count_a_busy_child_only_with_its_parent_when_asked():
    import os
    import subprocess
    import sys

    from bench import cpu

    before = cpu.snapshot({"tree": os.getpid(), "alone": os.getpid()}, frozenset({"alone"}))
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.5: pass\ninput()"],
                             stdin=subprocess.PIPE)
    try:
        import time

        deadline = time.monotonic() + 20
        while cpu.cpu_seconds(child.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = cpu.snapshot({"tree": os.getpid(), "alone": os.getpid()}, frozenset({"alone"}))
        # a restarted child is a new pid: how the Triton CPU figure notices a model reload
        assert {os.getpid(), child.pid} <= cpu.process_tree(os.getpid())
    finally:
        child.communicate(b"\n", timeout=10)
    assert child.pid not in cpu.process_tree(os.getpid())
    spent = cpu.per_request_ms(before, after, requests=1)
    assert spent["tree"] - spent["alone"] >= 450  # the child's 0.5 s, in ms
    assert spent["alone"] < spent["tree"]


class _Recorder:
    """A stand-in Milvus client that records each call's arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []

    def query(self, collection: str, **kw):
        self.calls.append(("query", collection, kw))
        return [{"id": "a", "vector": [0.5, 0.75]}]  # exact in float32

    def search(self, collection: str, **kw):
        # vectors as plain lists: the same floats compare equal however they were passed
        kw = {**kw, "data": [[float(x) for x in v] for v in kw["data"]]}
        self.calls.append(("search", collection, kw))
        return [[]]


async def test_the_direct_baseline_sends_the_gateways_own_milvus_calls():

    from bench import direct
    from visrec.platform.domain import IndexInfo
    from visrec.platform.milvus.serving import MilvusServingStore

    class Db:
        timeout = 5.0

        def __init__(self, client: _Recorder) -> None:
            self.client = client

        async def run(self, fn, *args, **kwargs):
            return fn(self.client, *args, **kwargs)

        async def read(self, fn):  # the asyncio client's calls, recorded alike
            recorder = self.client

            class Async:
                async def query(self, collection, **kw):
                    return recorder.query(collection, **kw)

                async def search(self, collection, **kw):
                    return recorder.search(collection, **kw)

            return await fn(Async(), self.timeout)

    gateway = _Recorder()
    store = MilvusServingStore(Db(gateway))  # type: ignore[arg-type]
    index = IndexInfo("items_v1", "1", 2, {}, 8)
    await store.neighbours(index, "a", 11, [])
    baseline = _Recorder()
    lookup, search = direct._gateway_calls(baseline, "items_v1", 10)
    search(lookup("a")[0]["vector"], 11)
    # the same calls with the same arguments; the deadline is the client's own in the baseline
    assert baseline.calls == [(op, c, {k: v for k, v in kw.items() if k != "timeout"})
                              for op, c, kw in gateway.calls]
    assert [op for op, *_ in baseline.calls] == ["query", "search"]


def test_the_side_by_side_report_shows_each_rpc_and_the_ratios(tmp_path):
    row = {"rpc": "SimilarItems", "concurrency": 16, "cpu_ratio": 0.7, "rps_ratio": 1.3,
           "change": {"cpu_ms": [4.0, 4.2, 3.9], "p50_ms": [90.0, 95.0, 92.0],
                      "rps": [170.0, 175.0, 172.0]},
           "baseline": {"cpu_ms": [6.0, 5.9, 6.1], "p50_ms": [140.0, 150.0, 145.0],
                        "rps": [110.0, 112.0, 108.0]}}
    data = {"compare": {"baseline": "main", "baseline_commit": "f92aea1" * 5, "seconds": 6.0,
                        "rounds": 3, "rows": [row]}}
    text = report.write(data, tmp_path).read_text()
    assert "## Side by side with main (f92aea1f92)" in text
    assert "| SimilarItems | 16 | 4.00 / 6.00 | 0.70 | 92.0 / 145.0 | 172 / 110 | 1.30 |" in text


def test_every_stage_is_a_function_of_the_table_and_compare_needs_a_baseline(capsys):
    from bench.__main__ import main
    from bench.runs import DEFAULT, STAGES

    assert set(DEFAULT) < set(STAGES) and "compare" in STAGES and "compare" not in DEFAULT
    with pytest.raises(SystemExit) as exit_:
        main(["--only", "compare"])
    assert exit_.value.code == 2 and "needs --baseline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--only", "nope"])
    assert "unknown stage(s) nope" in capsys.readouterr().err
