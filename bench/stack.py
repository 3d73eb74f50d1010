"""The stack a benchmark run measures, started once and only as far as its stages need it:
Triton (CPU, every model loaded: perf_analyzer measures preprocess and image_encoder alone),
a Milvus server, the demo catalog ingested (the collection and model version it produced are
what every stage embeds and searches with), and gateways by label.

A gateway may run another checkout's code (``--baseline REF``): ``baseline_checkout`` makes a
git worktree of REF with its own generated stubs, and the gateway process imports ``visrec``
from there instead of from this checkout, against the same Triton, Milvus and collection. So
main and a change are measured side by side in one run, on one machine state.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from visrec.export import repository as repo
from visrec.export.indexing.ingest import IngestReport, ingest
from visrec.export.milvus import MilvusDatabase
from visrec.local.milvus_server import MilvusServer, free_port
from visrec.local.triton_server import TritonServer
from visrec.platform.triton_embedder import TritonEmbedder

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Runs ``visrec.gateway`` from a checkout's tree: the editable install's import hook (which
# maps ``visrec`` to this checkout) is removed first, then the checkout is put first on the path.
_FROM_CHECKOUT = (
    "import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "
    "'__module__', '').startswith('__editable__')]; sys.path.insert(0, {root!r}); "
    "runpy.run_module('visrec.gateway', run_name='__main__')")


def baseline_checkout(ref: str, dest: Path) -> tuple[Path, str]:
    """A worktree of ``ref`` at ``dest`` (reused while it is at the same commit), with its gRPC
    stubs generated; (its root, the full commit id)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() if dest.exists() else ""
    if head != sha:
        if dest.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(dest)],
                           check=False)
            shutil.rmtree(dest, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), sha],
                       check=True, capture_output=True)
    subprocess.run([sys.executable, "scripts/gen_protos.py"], cwd=dest, check=True)
    return dest, sha


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    address: str
    metrics_port: int


@dataclass
class BenchStack:
    out: Path
    repository: Path
    catalog: Path
    triton_url: str = ""  # a running Triton to use instead of starting one
    triton: TritonServer | None = field(default=None, init=False)
    milvus: MilvusServer | None = field(default=None, init=False)
    served: IngestReport | None = field(default=None, init=False)
    gateways: dict[str, Gateway] = field(default_factory=dict, init=False)

    # ------------------------------------------------------------------ Triton
    def triton_address(self) -> str:
        if self.triton_url:
            return self.triton_url
        if self.triton is None:
            self.triton = TritonServer(
                repository=self.repository, http_port=free_port(), grpc_port=free_port(),
                metrics_port=free_port(), models=repo.MODELS, log_file=self.out / "triton.log")
            self.triton.start()
        return self.triton.grpc_url

    def load_models(self) -> None:
        """On a Triton not started here: load what is benchmarked (explicit model control)."""
        import tritonclient.grpc as g

        client = g.InferenceServerClient(self.triton_address())
        for model in repo.MODELS:
            client.load_model(model)
        client.close()

    @property
    def triton_pid(self) -> int | None:
        return self.triton.process.pid if self.triton and self.triton.process else None

    # ------------------------------------------------------------------ Milvus + the catalog
    def milvus_uri(self) -> str:
        if self.milvus is None:
            shutil.rmtree(self.out / "milvus-server", ignore_errors=True)  # fresh each run
            self.milvus = MilvusServer(self.out / "milvus-server", port=free_port())
        if self.milvus.process is None:
            self.milvus.start()
        return self.milvus.uri

    def ingested(self) -> IngestReport:
        """The demo catalog in the Milvus server (HNSW), embedded by the version Triton serves:
        its collection and model version are what the stages query."""
        if self.served is None:
            db = MilvusDatabase(self.milvus_uri(), timeout_s=60, index_type="HNSW")
            embedder = TritonEmbedder(self.triton_address(), timeout_s=300)
            self.served = asyncio.run(ingest(self.catalog, db.admin, db.items, embedder,
                                             changes=db.changes, progress=False))
            db.close_sync()
        return self.served

    def served_version(self) -> str:
        """The version the run ingested, or (before any stage ingested) the one Triton serves."""
        if self.served is not None:
            return self.served.model_version

        async def ask() -> str | None:
            embedder = TritonEmbedder(self.triton_address())
            try:
                return await embedder.served_version()
            finally:
                await embedder.close()

        version = asyncio.run(ask())
        if version is None:
            raise RuntimeError("Triton serves no image_embedding version")
        return version

    @property
    def collection(self) -> str:
        return self.ingested().collection

    @property
    def model_version(self) -> str:
        return self.ingested().model_version

    # ------------------------------------------------------------------ gateways
    def gateway(self, label: str = "gateway", checkout: Path | None = None) -> Gateway:
        """A gateway over the ingested catalog (started on first use): this checkout's, or
        ``checkout``'s code."""
        if label not in self.gateways:
            self.ingested()
            port, metrics_port = free_port(), free_port()
            address = f"127.0.0.1:{port}"
            env = {**os.environ, "VISREC_GRPC_ADDRESS": address,
                   "VISREC_METRICS_PORT": str(metrics_port), "VISREC_MILVUS_URI": self.milvus_uri(),
                   "VISREC_TRITON_URL": self.triton_address(), "VISREC_LOG_LEVEL": "WARNING"}
            command = ([str(BIN / "visrec-gateway")] if checkout is None else
                       [sys.executable, "-c", _FROM_CHECKOUT.format(root=str(checkout))])
            process = subprocess.Popen(command, env=env)
            self.gateways[label] = Gateway(process, address, metrics_port)
            wait_healthy(address)
        return self.gateways[label]

    def stop_gateway(self, label: str) -> None:
        gw = self.gateways.pop(label, None)
        if gw is not None:
            gw.process.terminate()
            gw.process.wait(30)

    def pids(self) -> dict[str, int]:
        """The processes whose CPU a load run divides among its requests."""
        out = {label: gw.process.pid for label, gw in self.gateways.items()}
        if self.milvus is not None and self.milvus.process is not None:
            out["milvus"] = self.milvus.process.pid
        if self.triton_pid is not None:
            out["triton"] = self.triton_pid
        return out

    def close(self) -> None:
        for label in list(self.gateways):
            self.stop_gateway(label)
        if self.milvus is not None:
            self.milvus.stop()
        if self.triton is not None:
            self.triton.stop()


def wait_healthy(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run([str(BIN / "visrec-healthcheck"), "--address", address],
                              capture_output=True, check=False)
        if proc.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"gateway at {address} not healthy")
