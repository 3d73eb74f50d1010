"""python -m bench: the benchmarks in one run, side by side, then the report.

Each stage is a function of ``bench.runs`` (``--only`` picks them from its table); they share
one stack (``bench.stack``: Triton on CPU, a Milvus server, the demo catalog ingested, gateways
by label), started only as far as the chosen stages need it. Every stage embeds and searches with
the collection and model version the run ingested. ``--baseline REF`` with ``--only compare``
measures this checkout's gateway beside REF's (a git worktree) on that same stack.
Nothing else may be running on the Milvus server's fixed ports (9091, etcd). Results
accumulate in <out>/results.json; the report is <out>/report.md with PNG plots beside it.

    python -m bench --only compare --baseline f92aea1 --seconds 6 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import perf, report, scale
from bench.results import Results
from bench.runs import DEFAULT, STAGES, Run
from bench.stack import BenchStack
from visrec.local.demo_catalog import build_catalog
from visrec.local.triton_server import DEFAULT_REPOSITORY

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
        text=True, check=False).stdout.strip()
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "gpu": gpu or "none", "python": platform.python_version(),
            "triton": "2.51.0 (nvidia-pytriton 0.7.0, CPU) unless --triton-url says otherwise",
            "onnxruntime": onnxruntime.__version__,
            "milvus": "Lite 2.5.1 and server 2.3.5", "date": time.strftime("%Y-%m-%d %H:%M")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench",
                   help="where results.json, report.md, plots and raw CSVs go")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each load run")
    p.add_argument("--only", default="", help="comma-separated stages of "
                   f"{', '.join(STAGES)} (default: {', '.join(DEFAULT)})")
    p.add_argument("--baseline", default="", metavar="REF",
                   help="a git commit or branch whose gateway --only compare measures beside "
                   "this checkout's (a worktree under <out>/baseline)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds of --only compare (each runs both gateways)")
    p.add_argument("--scale", default="10000,100000",
                   help="collection sizes of the ANN scale test (add 1000000 for 1M; slow)")
    p.add_argument("--scale-backends", default="lite,server",
                   help="where the ANN scale test runs: lite (Milvus Lite, IVF_FLAT), server "
                   "(Milvus server, HNSW); 1M on Lite takes hours")
    p.add_argument("--scale-data", choices=scale.SHAPES, default="mixtures",
                   help="shape of the ANN scale test's vectors (see bench/scale.py)")
    p.add_argument("--target", choices=["cpu", "gpu-onnx", "gpu-tensorrt"], default="cpu",
                   help="export target benchmarked; gpu targets need --triton-url (a Triton "
                   "with the onnxruntime / tensorrt backends, e.g. the NGC container, serving "
                   "--repository)")
    p.add_argument("--repository", type=Path, default=None,
                   help="model repository to export into and serve (default: the project's "
                   "for cpu, build/bench/<target>/model_repository otherwise)")
    p.add_argument("--triton-url", default="",
                   help="benchmark this running Triton (gRPC host:port) instead of starting "
                   "the CPU one")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from <out>/results.json")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    only = [s for s in filter(None, args.only.split(","))] or list(DEFAULT)
    if unknown := [s for s in only if s not in STAGES]:
        p.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    if not set(filter(None, args.scale_backends.split(","))) <= {"lite", "server"}:
        p.error(f"--scale-backends takes lite and/or server, not {args.scale_backends!r}")
    if "compare" in only and not args.baseline:
        p.error("--only compare needs --baseline REF")
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds must be >= 1 and --seconds > 0")
    if args.target != "cpu" and not args.triton_url:
        p.error(f"--target {args.target} needs --triton-url: the Triton started here (the "
                "nvidia-pytriton wheel) has only the python backend")
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")
    if args.report_only:
        report.write(results.data, args.out)
        return 0
    results.put("machine", machine())
    repository = args.repository or (DEFAULT_REPOSITORY if args.target == "cpu" else
                                     ROOT / "build" / "bench" / args.target / "model_repository")
    results.put("target", args.target)
    subprocess.run([str(Path(sys.executable).parent / "visrec-export"), "-q", "--target",
                    args.target, "--repository", str(repository)], check=True)
    stack = BenchStack(args.out, repository, build_catalog(), triton_url=args.triton_url)
    try:
        if args.triton_url:
            stack.load_models()
        run = Run(args, results, stack, perf.image_input_data(args.out / "images.json",
                                                              perf.photos()))
        for name in (s for s in STAGES if s in only):  # the table's order
            STAGES[name](run)
    finally:
        stack.close()
    report.write(results.data, args.out)
    print(f"[bench] report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
