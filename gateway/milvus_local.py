"""A real Milvus standalone server on this machine: the pip package `milvus` (2.3.5) ships the
binaries. Used by the tests and the benchmarks for the Milvus-server path (aliases, HNSW).
Its etcd, metrics (9091) and internal ports are fixed: one per machine at a time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class MilvusLaunchError(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port nothing listens on now (for servers started by tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class MilvusServer:
    data_dir: Path
    port: int = 19530
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> MilvusServer:
        binary = shutil.which("milvus-server", path=str(Path(sys.executable).parent)) or \
            shutil.which("milvus-server")
        if binary is None:
            raise MilvusLaunchError("milvus-server not installed (pip package `milvus`, "
                                    "installed by scripts/setup)")
        if listening(9091):
            raise MilvusLaunchError("port 9091 is taken (a Milvus server already running?)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "milvus.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--data", str(self.data_dir), "--proxy-port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (_healthy("http://127.0.0.1:9091/healthz") and listening(self.port)):
            if self.process.poll() is not None:
                raise MilvusLaunchError(f"milvus-server exited; see {self.data_dir}/milvus.log")
            if time.monotonic() > deadline:
                self.stop()
                raise MilvusLaunchError(f"milvus-server not healthy after {timeout:.0f}s")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        # SIGINT is the wrapper's own stop path (it stops `milvus run standalone`, its child);
        # whatever is left of the process group is then killed.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while listening(9091) and time.monotonic() < deadline:
            time.sleep(0.5)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP to its process group): to a client, a Milvus that stopped
        answering, as in a network partition or a stalled node."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
