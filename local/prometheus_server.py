"""A real Prometheus (Debian's package) scraping the local stack, with the project's own
configuration: monitoring/prometheus/prometheus.yml with its static targets pointed at local
ports, and the same rule files. Used by the local run (`visrec-demo --prometheus`) and the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG_SOURCE = ROOT / "monitoring" / "prometheus" / "prometheus.yml"


class PrometheusLaunchError(RuntimeError):
    pass


def local_config(targets: Mapping[str, Sequence[str]], *, scrape_interval: str = "15s",
                 source: Path = CONFIG_SOURCE) -> dict[str, Any]:
    """The production configuration with each job's discovery replaced by static ``targets``
    (jobs without local targets are dropped, and so is alerting); rule files become absolute
    paths."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config.setdefault("global", {}).update(
        scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
    config["rule_files"] = [str((source.parent / r).resolve())
                            for r in config.get("rule_files", [])]
    jobs = []
    for job in config.get("scrape_configs", []):
        if job["job_name"] in targets:
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
            jobs.append(job)
    unknown = set(targets) - {j["job_name"] for j in jobs}
    if unknown:
        raise PrometheusLaunchError(f"no scrape job named {sorted(unknown)} in {source}")
    config["scrape_configs"] = jobs
    config.pop("alerting", None)  # no Alertmanager runs locally
    return config


def api(base_url: str, path: str, **params: str) -> Any:
    """GET <base_url>/api/v1/<path> and return its `data` (raises on an error status)."""
    url = f"{base_url.rstrip('/')}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    if body.get("status") != "success":
        raise PrometheusLaunchError(f"{path} {params}: {body.get('error', body)}")
    return body["data"]


@dataclass
class PrometheusServer:
    targets: Mapping[str, Sequence[str]]
    data_dir: Path
    port: int = 9090
    scrape_interval: str = "15s"
    retention: str = "2d"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tsdb(self) -> Path:
        return self.data_dir / "tsdb"

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusLaunchError("prometheus is not installed (scripts/setup installs "
                                        "Debian's package)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(local_config(
            self.targets, scrape_interval=self.scrape_interval), sort_keys=False))
        log = (self.data_dir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.tsdb}",
             f"--storage.tsdb.retention.time={self.retention}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise PrometheusLaunchError(
                    f"prometheus exited ({self.process.returncode}); see "
                    f"{self.data_dir / 'prometheus.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusLaunchError(f"prometheus not ready after {timeout:.0f}s")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        return api(self.url, path, **params)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
