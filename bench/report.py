"""The benchmark report: markdown + the JSON beside it + PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import paired
from bench.stats import median

TARGETS = [
    ("Triton image_encoder >= 0.85 x in-process ONNX Runtime (best batch and layout)", 0.85),
    ("Triton image_embedding (bytes -> vector) >= 0.8 x the in-process whole path", 0.8),
    ("gateway SimilarItems p50 <= 1.3 x direct Milvus p50", 1.3),
    ("gateway SearchByImage p50 <= 1.2 x (Triton image_embedding p50 + direct Milvus search "
     "p50), 1 in flight", 1.2),
    ("ingest >= 0.8 x image_embedding", 0.8),
    ("ANN recall@10 >= 0.95 at 1M on the Milvus server", 0.95),
    ("UpsertItems through the gateway >= 0.8 x visrec-ingest (same Milvus server)", 0.8),
]


def _best(rows: list[dict[str, Any]] | None) -> float:
    return max((r["images_per_s"] for r in rows or []), default=float("nan"))


def _at(rows: list[dict[str, Any]] | None, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows or [] if int(r.get("Concurrency", 0)) == concurrency), None)


def _row(name: str, value: float, bound: float, how: str, *, at_most: bool = False
         ) -> tuple[str, float, float, bool | None, str]:
    met = None if math.isnan(value) else (value <= bound if at_most else value >= bound)
    return (name, value, bound, met, how)


def ratios(data: dict[str, Any]) -> list[tuple[str, float, float, bool | None, str]]:
    """(target, measured, bound, met, how) for every target the data allows."""
    enc_rows = data.get("perf_image_encoder") or []
    enc = _best(enc_rows)
    enc_shm = any(r.get("shared_memory") and r["images_per_s"] == enc for r in enc_rows)
    pipe = _best(data.get("perf_image_embedding"))
    ceiling = _best(data.get("ceiling_onnxruntime"))
    whole = data.get("ceiling_whole_path", {}).get("best", {}).get("images_per_s",
                                                                     float("nan"))
    gw = data.get("gateway", {})
    similar = next((r for r in gw.get("SimilarItems", []) if r["level"] == 1), None)
    by_image = next((r for r in gw.get("SearchByImage", []) if r["level"] == 1), None)
    direct = data.get("direct_milvus_similar_items")
    search = data.get("direct_milvus_search")
    # Triton at 1 in flight measured with the stack up (as SearchByImage runs), else alone
    pipe_1 = data.get("direct_triton_embedding") or _at(data.get("perf_image_embedding"), 1)
    ingest = data.get("ingest", {}).get("images_per_s", float("nan"))
    scale = [r for r in data.get("scale", []) if r["backend"] == "server"]
    at_1m = next((r for r in scale if r["vectors"] >= 1_000_000), None)
    rows = [_row(TARGETS[0][0], enc / ceiling, 0.85,
                 f"{enc:.1f} / {ceiling:.1f} images/s"
                 + (" (tensors in shared memory)" if enc_shm else "")),
            _row(TARGETS[1][0], pipe / whole, 0.8, f"{pipe:.1f} / {whole:.1f} images/s")]
    pair = data.get("paired_similar_items")
    if pair:  # gateway and direct in interleaved rounds: the same machine for both
        g, d = pair["p50_ms"]["gateway"], pair["p50_ms"]["direct"]
        rows.append(_row(TARGETS[2][0], paired.ratio(pair, "gateway", "direct"), 1.3,
                         f"median of {pair['rounds']} interleaved rounds' ratios; medians "
                         f"{g:.2f} / {d:.2f} ms", at_most=True))
    elif similar and direct:
        rows.append(_row(TARGETS[2][0], similar["p50_ms"] / direct["p50_ms"], 1.3,
                         f"{similar['p50_ms']:.2f} / {direct['p50_ms']:.2f} ms", at_most=True))
    pair = data.get("paired_search_by_image")
    if pair:
        m = pair["p50_ms"]
        how = (f"median of {pair['rounds']} interleaved rounds' ratios; medians "
               f"{m['gateway']:.2f} / ({m['triton']:.2f} + {m['search']:.2f}) ms (Triton through "
               f"the gateway's own client")
        if pipe_1:
            how += f"; perf_analyzer with the stack up: {pipe_1['p50 latency'] / 1000:.2f} ms"
        how += (f"); the same two calls back to back without the gateway: "
                f"{m['back to back']:.2f} ms "
                f"({paired.ratio(pair, 'gateway', 'back to back'):.2f} x)")
        rows.append(_row(TARGETS[3][0], paired.ratio(pair, "gateway", "triton", "search"), 1.2,
                         how, at_most=True))
    elif by_image and search and pipe_1:
        parts = pipe_1["p50 latency"] / 1000 + search["p50_ms"]
        how = (f"{by_image['p50_ms']:.2f} / ({pipe_1['p50 latency'] / 1000:.2f} + "
               f"{search['p50_ms']:.2f}) ms")
        both = data.get("direct_search_by_image")
        if both:
            how += (f"; the same two calls back to back without the gateway: "
                    f"{both['p50_ms']:.2f} ms ({by_image['p50_ms'] / both['p50_ms']:.2f} x)")
        rows.append(_row(TARGETS[3][0], by_image["p50_ms"] / parts, 1.2, how, at_most=True))
    rows.append(_row(TARGETS[4][0], ingest / pipe, 0.8, f"{ingest:.1f} / {pipe:.1f} images/s"))
    up = data.get("upsert", {}).get("items_per_s")
    batch = data.get("ingest_server", {}).get("images_per_s")
    if up and batch:
        rows.append(_row(TARGETS[6][0], up / batch, 0.8, f"{up:.1f} / {batch:.1f} images/s"))
    if at_1m:
        rows.append(_row(TARGETS[5][0], at_1m["recall@10"], 0.95,
                         f"HNSW {at_1m['index_params']}, {at_1m['search_params']}"))
    else:
        largest = max(scale, key=lambda r: r["vectors"], default=None)
        how = (f"not run at 1M; at {largest['vectors']:,}: {largest['recall@10']:.3f}"
               if largest else "not run")
        rows.append((TARGETS[5][0], float("nan"), 0.95, None, how))
    return rows


def _whole_path(data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    st = data.get("stages_inprocess")
    if st:
        lines += ["", "## bytes -> vector by stage, in-process", "",
                  "Median ms per image of each stage alone, one core (encode: per image of a "
                  "batch of 16, all cores):", "",
                  "| images | decode | resize + crop | normalise | encode |",
                  "| --- | --- | --- | --- | --- |"]
        for name, t in st.items():
            lines.append(f"| {name} | {t['decode']:.2f} | {t['resize_crop']:.2f} | "
                         f"{t['normalise']:.2f} | {t['encode']:.2f} |")
    c = data.get("ceiling_whole_path")
    if c:
        lines += ["", "The whole path in one process (photos; decode + preprocess + ORT; the "
                  "best row is the ceiling Triton's image_embedding is compared with):", "",
                  "| batch | sessions x ORT threads | decode threads | images/s | "
                  "CPU ms per image |", "| --- | --- | --- | --- | --- |"]
        for r in c["rows"]:
            lines.append(f"| {r['batch']} | {r['workers']} x {r['ort_threads']} | "
                         f"{r['decode_threads'] or 'in the worker'} | "
                         f"{_fmt(r['images_per_s'])} | {_fmt(r.get('cpu_ms_per_image', '-'))} |")
        lines.append(f"| {c['serial']['batch']} | serial loop, 1 x all | none | "
                     f"{_fmt(c['serial']['images_per_s'])} | - |")
    return lines


def _gateway_overhead(data: dict[str, Any]) -> list[str]:
    """What a call through the gateway pays that the direct baselines do not."""
    lines: list[str] = []
    for key, rpc in (("paired_similar_items", "SimilarItems"),
                     ("paired_search_by_image", "SearchByImage")):
        pair = data.get(key)
        if pair:
            lines += ["", f"{rpc} at 1 in flight and its baselines, in interleaved rounds "
                      "(p50 ms of each round; the targets take the medians):", "",
                      "| measure | " + " | ".join(f"round {i + 1}" for i in range(
                          pair["rounds"])) + " | median |",
                      "| --- |" + " --- |" * (pair["rounds"] + 1)]
            lines += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in values)
                      + f" | {pair['p50_ms'][name]:.2f} |"
                      for name, values in pair["per_round_ms"].items()]
    floor = data.get("grpc_floor")
    if floor:
        lines += ["", f"A gRPC call that does no work (grpc.health.v1 Check through the gateway, "
                  f"1 in flight): p50 {floor['p50_ms']:.2f} ms. Every gateway call pays it on "
                  "top of its backends."]
    idle = data.get("milvus_search_after_idle")
    if idle:
        lines += ["", "Milvus search p50 after the client idled (no other load): a search "
                  "sent right after the previous one is faster than one that finds Milvus' "
                  "threads parked and the cores asleep; behind the gateway Milvus always "
                  "sees gaps (each request's trip through the gateway; SearchByImage's "
                  "embedding before its search):", "",
                  "| idle before the call | " + " | ".join(
                      f"{r['gap_ms']:g} ms" for r in idle) + " |",
                  "| --- | " + " | ".join("---" for _ in idle) + " |",
                  "| search p50 ms | " + " | ".join(f"{r['p50_ms']:.2f}" for r in idle) + " |"]
    both = data.get("direct_search_by_image")
    if both:
        lines += ["", f"SearchByImage's work without the gateway (the gateway's Triton client, "
                  f"then the same search, back to back, 1 in flight): p50 "
                  f"{both['p50_ms']:.2f} ms; embed p50 {both['embed_p50_ms']:.2f}, search p50 "
                  f"{both['search_p50_ms']:.2f} ms."]
    return lines


def _fmt(x: Any, nd: int = 1) -> str:
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:,.{nd}f}"
    return str(x)


def write(data: dict[str, Any], out: Path) -> Path:
    lines = ["# visrec benchmark report", ""]
    m = data.get("machine", {})
    lines += [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, "
              f"GPU: {m.get('gpu')}. Triton {m.get('triton')}, ONNX Runtime "
              f"{m.get('onnxruntime')}, Milvus {m.get('milvus')}. {m.get('date')}.", "",
              "All numbers come from one run on this machine (side by side); latencies are "
              "medians of the run unless a percentile is named.", "", "## Targets", "",
              "| target | measured | bound | met | from |", "| --- | --- | --- | --- | --- |"]
    for name, value, bound, met, how in ratios(data):
        mark = {True: "yes", False: "**no**", None: "not measured"}[met]
        lines.append(f"| {name} | {_fmt(value, 2)} | {bound} | {mark} | {how} |")

    if "perf_image_encoder" in data:
        lines += ["", "## Triton (perf_analyzer over gRPC)", "",
                  "| model | batch | concurrency | images/s | p50 ms | p99 ms | queue us | "
                  "compute us | CPU ms per image: Triton + perf_analyzer |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key in ("perf_image_encoder", "perf_image_embedding"):
            for r in data.get(key, []):
                shm = " (shared memory)" if r.get("shared_memory") else ""
                lines.append(
                    f"| {key.removeprefix('perf_')}{shm} | {int(r['batch'])} | "
                    f"{int(r['Concurrency'])} | {_fmt(r['images_per_s'])} | "
                    f"{_fmt(r['p50 latency'] / 1000)} | {_fmt(r['p99 latency'] / 1000)} | "
                    f"{_fmt(r['Server Queue'], 0)} | {_fmt(r['Server Compute Infer'], 0)} | "
                    + (f"{cpu['triton']:.1f} + {cpu['perf_analyzer']:.1f}"
                       if (cpu := r.get("cpu_ms_per_image")) else "-") + " |")
        lines += ["", "In-process ONNX Runtime (the encoder's ceiling):", "",
                  "| sessions x threads | batch | images/s | batch p50 ms |",
                  "| --- | --- | --- | --- |"]
        for r in data.get("ceiling_onnxruntime", []):
            lines.append(f"| {r.get('sessions', 1)} x {r.get('threads')} | {r['batch']} | "
                         f"{_fmt(r['images_per_s'])} | {_fmt(r['batch_ms_p50'])} |")
    lines += _whole_path(data)
    if "tuning" in data:
        lines += ["", "## Tuning (before / after, same run)", "",
                  "| model | variant | images/s | p50 ms |", "| --- | --- | --- | --- |"]
        for r in data["tuning"]["variants"]:
            lines.append(f"| {r['model']} | {r['variant']} | {_fmt(r['images_per_s'])} | "
                         f"{_fmt(r['p50_ms'])} |")
    if "gateway" in data:
        lines += ["", "## Gateway (async gRPC load generator)", "",
                  "| call | mode | level | req/s | p50 ms | p95 ms | p99 ms | errors | "
                  "CPU ms per request |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, runs in data["gateway"].items():
            for r in runs:
                level = (f"{r['level']:.0f} rps offered" if r["mode"] == "open"
                         else f"{r['level']:.0f} in flight")
                lines.append(f"| {name} | {r['mode']} | {level} | {_fmt(r['throughput_rps'])} "
                             f"| {_fmt(r['p50_ms'], 2)} | {_fmt(r['p95_ms'], 2)} | "
                             f"{_fmt(r['p99_ms'], 2)} | {r['errors']} | "
                             + ", ".join(f"{k} {v:.1f}" for k, v in
                                         r.get("cpu_ms_per_request", {}).items()) + " |")
        d = data.get("direct_milvus_similar_items")
        if d:
            lines += ["", f"Direct Milvus (the same two calls SimilarItems makes, with its "
                      f"filter, fields, search parameters and consistency; one client, "
                      f"sequential): p50 {d['p50_ms']:.2f} ms, p95 {d['p95_ms']:.2f} ms, "
                      f"{d['throughput_rps']:.0f} req/s."]
        d = data.get("direct_milvus_search")
        if d:
            lines += ["", f"Direct Milvus search (SearchByImage's search of an embedded photo, "
                      f"same fields and params): p50 {d['p50_ms']:.2f} ms, p95 "
                      f"{d['p95_ms']:.2f} ms."]
        t = data.get("direct_triton_embedding")
        if t:
            lines += ["", f"Triton image_embedding at 1 in flight with Milvus and the gateway up "
                      f"(perf_analyzer): p50 {t['p50 latency'] / 1000:.2f} ms; alone, before "
                      f"Milvus started: see the Triton table."]
        lines += _gateway_overhead(data)
        st = data.get("stages_ms")
        if st and all(isinstance(v, dict) for v in st.values()):
            lines += ["", "Mean time by stage inside the gateway, each RPC at 1 request in "
                      "flight (ms per call of the stage, from the gateway's stage histograms "
                      "over that run only):"]
            lines += [f"- {rpc}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                stages.items(), key=lambda kv: -kv[1])) for rpc, stages in st.items()]
    if "ingest" in data:
        i = data["ingest"]
        lines += ["", f"## Ingest\n\n{i['images']} images in {i['seconds']:.1f} s: "
                  f"{i['images_per_s']:.1f} images/s (decode, embed and insert pipelined)."]
    if "upsert" in data:
        u, b = data["upsert"], data.get("ingest_server", {})
        lines += ["", f"## Online catalog changes\n\nUpsertItems, {u['level']:.0f} concurrent "
                  f"streams of {u['batch']} items: {u['items']} items, "
                  f"{u['items_per_s']:.1f} items/s (stream p50 {u['p50_ms']:.0f} ms, "
                  f"{u['errors']} errors); visrec-ingest into the same Milvus server: "
                  f"{_fmt(b.get('images_per_s', float('nan')))} images/s."]
    if "compare" in data:
        lines += _compare(data["compare"])
    if "scale" in data:
        lines += ["", "## ANN at scale", "",
                  "Data: see bench/scale.py; similarity = median cosine of a query's exact 1st "
                  "/ 10th neighbour.", "",
                  "| backend | vectors | data | similarity 1st / 10th | index | insert vec/s | "
                  "flush+index s | search p50 ms | p95 ms | recall@10 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in data["scale"]:
            lines.append(f"| {r['backend']} | {r['vectors']:,} | {r.get('data', 'clusters')} | "
                         f"{_fmt(r.get('nn1_similarity', float('nan')), 3)} / "
                         f"{_fmt(r.get('nn10_similarity', float('nan')), 3)} | {r['index']} "
                         f"{r['index_params']} / {r['search_params']} | "
                         f"{_fmt(r['insert_vectors_per_s'], 0)} | "
                         f"{_fmt(r['flush_and_index_s'])} | {_fmt(r['p50_ms'], 2)} | "
                         f"{_fmt(r['p95_ms'], 2)} | {_fmt(r['recall@10'], 3)} |")
    lines += ["", "Plots: `latency_vs_throughput.png`, `stages.png`, `scale.png`. Raw "
              "perf_analyzer CSVs and `results.json` are beside this file."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    _plots(data, out)
    return path


def _compare(c: dict[str, Any]) -> list[str]:
    """This checkout's gateway beside the baseline's, from interleaved rounds."""
    lines = ["", f"## Side by side with {c['baseline']} ({c['baseline_commit'][:10]})", "",
             f"The same Triton, Milvus server and collection; {c['rounds']} interleaved rounds of "
             f"{c['seconds']:g} s each per gateway. Gateway CPU = CPU ms of the gateway process "
             "per request (warm-up included); each ratio is the median of the rounds' own "
             "ratios (change / baseline).", "",
             "| RPC | in flight | gateway CPU ms: change / baseline | CPU ratio | p50 ms: change "
             "/ baseline | req/s: change / baseline | throughput ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in c["rows"]:
        ch, base = r["change"], r["baseline"]
        lines.append(
            f"| {r['rpc']} | {r['concurrency']} | {median(ch['cpu_ms']):.2f} / "
            f"{median(base['cpu_ms']):.2f} | {r['cpu_ratio']:.2f} | "
            f"{median(ch['p50_ms']):.1f} / {median(base['p50_ms']):.1f} | "
            f"{median(ch['rps']):.0f} / {median(base['rps']):.0f} | {r['rps_ratio']:.2f} |")
    return lines


def _plots(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for key, label in (("perf_image_encoder", "image_encoder"),
                       ("perf_image_embedding", "image_embedding")):
        rows = data.get(key, [])
        for batch in sorted({int(r["batch"]) for r in rows}):
            sel = sorted((r for r in rows if int(r["batch"]) == batch),
                         key=lambda r: r["Concurrency"])
            axes[0].plot([r["images_per_s"] for r in sel], [r["p50 latency"] / 1000 for r in sel],
                         marker="o", label=f"{label} batch {batch}")
    for r in data.get("ceiling_onnxruntime", []):
        axes[0].axvline(r["images_per_s"], color="grey", alpha=0.15)
    axes[0].set(xlabel="images/s", ylabel="p50 latency (ms)",
                title="Triton: latency vs throughput (grey: in-process ORT per batch size)")
    axes[0].legend(fontsize=7)
    for name, runs in data.get("gateway", {}).items():
        sel = sorted(runs, key=lambda r: r["throughput_rps"])
        axes[1].plot([r["throughput_rps"] for r in sel], [r["p50_ms"] for r in sel],
                     marker="o", label=name)
    axes[1].set(xlabel="requests/s", ylabel="p50 latency (ms)", yscale="log",
                title="Gateway: latency vs throughput")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_throughput.png", dpi=90)
    plt.close(fig)

    stages = {f"{rpc}: {k}": v for rpc, per in data.get("stages_ms", {}).items()
              if isinstance(per, dict) for k, v in per.items()}
    if stages:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        items = sorted(stages.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set(xlabel="mean ms per call, 1 request in flight",
               title="Time by stage inside the gateway")
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=90)
        plt.close(fig)

    scale = data.get("scale", [])
    if scale:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for backend in sorted({r["backend"] for r in scale}):
            sel = sorted((r for r in scale if r["backend"] == backend),
                         key=lambda r: r["vectors"])
            xs = [r["vectors"] for r in sel]
            axes[0].plot(xs, [r["p50_ms"] for r in sel], marker="o", label=backend)
            axes[1].plot(xs, [r["recall@10"] for r in sel], marker="o", label=backend)
        axes[0].set(xscale="log", xlabel="vectors", ylabel="search p50 (ms)",
                    title="Search latency as the collection grows")
        axes[1].set(xscale="log", xlabel="vectors", ylabel="recall@10 vs exact",
                    title="ANN recall", ylim=(0, 1.02))
        for ax in axes:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "scale.png", dpi=90)
        plt.close(fig)
