"""Before / after for the CPU knobs of the Triton models (instances, ORT threads and slices,
spinning, BLS vs in-process encoder), each measured with perf_analyzer and put back after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import perf


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
