"""A real Milvus standalone server on this machine: the pip package `milvus` (2.3.5) ships the
binaries. Used by the tests and the benchmarks for the Milvus-server path (aliases, HNSW).
Its etcd and internal ports are fixed: one per machine at a time. Its metrics / health port is
9091 unless something else holds 9091 (the wrapper then takes the next free port), so
``metrics_port`` is read from the server process itself. ``restart`` keeps data and ports."""

from __future__ import annotations

import contextlib
import importlib.util
import os
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


# `milvus-server` with SO_REUSEADDR on its port probe (see the script's docstring).
LAUNCHER = Path(__file__).with_name("milvus_launcher.py")


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (from /proc)."""
    parent_of: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent_of[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parent_of.items() if parent == current]
        out += children
        frontier += children
    return out


@dataclass
class MilvusServer:
    data_dir: Path
    port: int = 19530
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    metrics_port: int | None = field(default=None, init=False)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> MilvusServer:
        if importlib.util.find_spec("milvus") is None:
            raise MilvusLaunchError("milvus-server not installed (pip package `milvus`, "
                                    "installed by scripts/setup)")
        if listening(self.port):
            raise MilvusLaunchError(f"port {self.port} is taken (a Milvus server already "
                                    f"running?)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "milvus.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--data", str(self.data_dir), "--proxy-port",
             str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        self.metrics_port = None
        while not (self._metrics_port() is not None and listening(self.port)
                   and _healthy(f"http://127.0.0.1:{self.metrics_port}/healthz")):
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
        while listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.metrics_port = None

    def restart(self, timeout: float = 180.0) -> MilvusServer:
        """Stop and start again on the same data directory (and the same ports)."""
        self.stop()
        return self.start(timeout)

    def _metrics_port(self) -> int | None:
        """METRICS_PORT from the environment the wrapper gave `milvus run standalone`."""
        if self.metrics_port is None and self.process is not None:
            for pid in _descendants(self.process.pid):
                with contextlib.suppress(OSError):
                    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                        if entry.startswith(b"METRICS_PORT="):
                            self.metrics_port = int(entry.split(b"=", 1)[1])
                            return self.metrics_port
        return self.metrics_port

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
