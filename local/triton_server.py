"""visrec-triton: run the real Triton server shipped in the nvidia-pytriton wheel, on the CPU.

The wheel carries tritonserver 2.51.0 with only the python backend. Its backend folder is copied
into build/triton (never written inside site-packages at run time) together with the Python 3.11
stub, and the server runs in explicit model-control mode: models are loaded by name, and later
through the repository API.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = ROOT / "model_repository"
DEFAULT_BUILD = ROOT / "build" / "triton"
DEFAULT_STATE = ROOT / "data" / "triton"


class TritonLaunchError(RuntimeError):
    pass


def _pytriton_dirs() -> tuple[Path, Path]:
    try:
        import pytriton
    except ImportError as e:
        raise TritonLaunchError(
            "the nvidia-pytriton wheel is not installed (pip install 'visrec[triton-cpu]')"
        ) from e
    pkg = Path(pytriton.__file__).parent
    return pkg / "tritonserver", pkg.parent / "nvidia_pytriton.libs"


def prepare_backends(build_dir: Path = DEFAULT_BUILD) -> Path:
    """Copy the python backend and the 3.11 stub into build_dir/backends (idempotent)."""
    server_dir, _ = _pytriton_dirs()
    python_tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / python_tag / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonLaunchError(f"no python backend stub for Python {python_tag} in {stub.parent}")
    target = build_dir / "backends" / "python"
    sources = [*sorted((server_dir / "backends" / "python").glob("*.*")), stub]
    fresh = all(
        (target / s.name).exists() and (target / s.name).stat().st_size == s.stat().st_size
        for s in sources
    )
    if not fresh:
        target.mkdir(parents=True, exist_ok=True)
        for s in sources:
            shutil.copy2(s, target / s.name)
    return build_dir / "backends"


@dataclass
class TritonServer:
    """One tritonserver process. ``start()`` returns once the server is ready."""

    repository: Path = DEFAULT_REPOSITORY
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # None: what the repository's serving path calls (visrec.export.repository.serving_models);
    # a benchmark that measures preprocess or image_encoder alone names them.
    models: Sequence[str] | None = None
    log_file: Path | None = None
    build_dir: Path = DEFAULT_BUILD
    extra_args: Sequence[str] = ()
    # Restrict the repository API (load, unload, index) to callers presenting this key, as the
    # images do (docker/triton/start.sh); empty: open, as for a laptop.
    admin_key: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def command(self) -> list[str]:
        server_dir, _ = _pytriton_dirs()
        backends = prepare_backends(self.build_dir)
        return [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.load_models()),
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
            *(restricted_api_args(self.admin_key) if self.admin_key else ()),
            *self.extra_args,
        ]

    def load_models(self) -> Sequence[str]:
        from visrec.export.repository import serving_models

        return self.models if self.models is not None else serving_models(self.repository)

    def environment(self) -> dict[str, str]:
        _, libs = _pytriton_dirs()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The stub embeds the system libpython3.11; point it at this environment's packages
        # (numpy < 2, Pillow, onnxruntime) for the models it runs.
        site = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p)
        env["VIRTUAL_ENV"] = sys.prefix
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env

    def start(self, timeout: float = 180.0) -> TritonServer:
        if not self.repository.is_dir():
            raise TritonLaunchError(f"model repository {self.repository} does not exist "
                                    "(run visrec-export first)")
        out = subprocess.DEVNULL
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_file.open("ab")  # type: ignore[assignment]
        self.process = subprocess.Popen(
            self.command(), env=self.environment(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonLaunchError(
                    f"tritonserver exited with code {self.process.returncode}"
                    + (f"; last log lines:\n{tail(self.log_file)}" if self.log_file else "")
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f}s")

    def stop(self, grace: float = 20.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # Triton drains in-flight requests, then unloads
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def restricted_api_args(key: str) -> list[str]:
    """Triton's flags that refuse repository calls without header ``visrec-admin-key: key``
    (the same as docker/triton/start.sh)."""
    return [f"--grpc-restricted-protocol=model-repository:visrec-admin-key={key}",
            f"--http-restricted-api=model-repository:visrec-admin-key={key}"]


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[TritonServer]:
    server = TritonServer(**kwargs)  # type: ignore[arg-type]
    with server:
        yield server


# ---------------------------------------------------------------------------- CLI
def _pid_file(state: Path) -> Path:
    return state / "tritonserver.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(state: Path) -> int | None:
    try:
        pid = int(_pid_file(state).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-triton",
        description="Start, stop or check the local CPU Triton server (tritonserver 2.51 from "
                    "the nvidia-pytriton wheel) serving the model repository in explicit "
                    "model-control mode.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("action", choices=["start", "stop", "status", "run"],
                   help="start: in the background, return when ready; stop: SIGTERM and wait; "
                        "status: is it up; run: in the foreground until interrupted")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model", action="append", dest="models",
                   help="model to load at start (repeatable; default: the models the "
                        "repository's serving path calls: image_embedding on the cpu target)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE,
                   help="where the pid file and the server log live")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    args = p.parse_args(argv)

    server = TritonServer(
        repository=args.repository.resolve(), http_port=args.http_port,
        grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        models=args.models, log_file=args.state_dir / "tritonserver.log",
    )
    pid = _read_pid(args.state_dir)
    try:
        if args.action == "status":
            ready = server.is_ready()
            print(f"tritonserver: pid {pid or '-'}, {'ready' if ready else 'not ready'} "
                  f"at {server.http_url}")
            return 0 if ready else 1
        if args.action == "stop":
            if pid is None:
                print("tritonserver: not running")
                return 0
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            _pid_file(args.state_dir).unlink(missing_ok=True)
            print(f"tritonserver: stopped (pid {pid})")
            return 0
        if pid is not None and server.is_ready():
            print(f"tritonserver: already running (pid {pid}) at {server.http_url}")
            return 0
        if args.action == "run":
            os.execve(server.command()[0], server.command(), server.environment())
        server.start(args.timeout)
        assert server.process is not None
        args.state_dir.mkdir(parents=True, exist_ok=True)
        _pid_file(args.state_dir).write_text(str(server.process.pid))
        server.process = None  # detach: it keeps running after this command exits
        print(f"tritonserver: ready at {server.http_url} (gRPC {server.grpc_url}, metrics "
              f":{server.metrics_port}); log {server.log_file}")
        return 0
    except TritonLaunchError as e:
        print(f"visrec-triton: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
