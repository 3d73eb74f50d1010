"""The README's first command, as a newcomer runs it (minus set-up, which the test command did):
export -> Triton -> catalog -> ingest -> gateway -> real recommendations printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, free_port


@pytest.mark.timeout(2400)
def test_main_job_prints_real_recommendations(tmp_path):
    demo = Path(sys.executable).parent / "visrec-demo"
    ports = [str(free_port()) for _ in range(5)]
    cmd = [str(demo), "--grpc-port", ports[0], "--metrics-port", ports[1],
           "--triton-grpc-port", ports[2], "--triton-http-port", ports[3],
           "--triton-metrics-port", ports[4], "--milvus-uri", str(tmp_path / "demo.db"),
           "--repository", str(tmp_path / "model_repository")]
    # One run, as a newcomer runs the README's commands: the demo, then (--train-catalog)
    # learning "same product, other picture" from the catalog. Once: the export's and the
    # ingest's reuse on a second run are checked below and in tests/integration/test_ingest.py.
    proc = subprocess.run([*cmd, "--train-catalog"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800, check=False)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SimilarItems(google:1f34e, k=8)" in out
    similar = out.split("SimilarItems(google:1f34e, k=8)")[1].split("SimilarItems(")[0]
    assert "Red Apple" in similar and "food-fruit" in similar
    filtered = out.split("vendor == twitter)")[1].split("SearchByImage(")[0]
    assert filtered.count("twitter") == 5 and "google" not in filtered
    assert out.count("SearchByImage(") == 2 and "model v1" in out
    before = out.split("vendor == twitter) before: its twin")[1]
    after = out.split("vendor == twitter) after (version 2): its twin")[1]
    assert "model v1" in before.split("\n")[0] and "model v2" in after.split("\n")[0]
    # a second export of the same model is a no-op (what makes a second ./scripts/run fast)
    export = subprocess.run([str(demo.parent / "visrec-export"), "--target", "cpu",
                             "--repository", str(tmp_path / "model_repository")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert export.returncode == 0 and "already holds this export" in export.stderr, (
        export.stderr[-2000:])
    # visrec-evaluate on the emoji training never read (its --json): a clear gain both ways
    scores = json.loads((ROOT / "artifacts" / "train-catalog" / "evaluate.json").read_text())
    by = {(g["version"], g["source"], g["target"]): g for g in scores["groups"]}
    for a, b in (("google", "twitter"), ("twitter", "google")):
        old, new = by["1", a, b], by["2", a, b]
        assert old["queries"] == new["queries"] > 300
        assert new["hit_k"] > old["hit_k"] + 0.08 and new["mrr"] > old["mrr"] + 0.08, by
