"""The Grafana dashboards in monitoring/grafana/dashboards, read as data: their panel queries
with template variables expanded, and `visrec-panels`, which renders the panels to PNG from a
Prometheus server for readers without Grafana."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "monitoring" / "grafana" / "dashboards"
# What "All" and Grafana's interval macros expand to outside Grafana.
DEFAULT_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    title: str
    kind: str
    unit: str
    ref: str
    expr: str
    legend: str


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def dashboards(directory: Path = DASHBOARDS) -> dict[str, dict[str, Any]]:
    return {p.stem: load(p) for p in sorted(directory.glob("*.json"))}


def expand(expr: str, variables: Mapping[str, str]) -> str:
    """Replace $name, ${name} and [[name]] with their values ('.*' for unknown query
    variables, which is what Grafana's All means here)."""
    def value(name: str) -> str:
        return variables.get(name, DEFAULT_VARIABLES.get(name, ".*"))

    expr = re.sub(r"\$\{(\w+)(?::\w+)?\}", lambda m: value(m.group(1)), expr)
    expr = re.sub(r"\[\[(\w+)\]\]", lambda m: value(m.group(1)), expr)
    return re.sub(r"\$(\w+)", lambda m: value(m.group(1)), expr)


def queries(dashboard: Mapping[str, Any], variables: Mapping[str, str] | None = None
            ) -> Iterator[PanelQuery]:
    variables = variables or {}
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield PanelQuery(
                dashboard=dashboard["uid"], panel_id=panel["id"], title=panel["title"],
                kind=panel["type"], unit=panel.get("fieldConfig", {}).get("defaults", {})
                .get("unit", ""), ref=target.get("refId", ""),
                expr=expand(target["expr"], variables), legend=target.get("legendFormat", ""))


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return text.strip() or ",".join(f"{k}={v}" for k, v in labels.items()) or "value"


def render(prometheus: str, out: Path, names: list[str] | None = None, minutes: float = 15.0,
           variables: Mapping[str, str] | None = None) -> list[Path]:
    """One PNG per dashboard: every panel as a small chart of the last ``minutes``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from visrec.local.prometheus_server import api as prometheus_api

    def api(path: str, **params: str) -> Any:
        return prometheus_api(prometheus, path, **params)

    end = time.time()
    start = end - minutes * 60
    step = max(1.0, (end - start) / 240)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dash in dashboards().items():
        if names and name not in names:
            continue
        panels = dash["panels"]
        cols = 2
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        for ax, panel in zip(axes.flat, panels, strict=False):
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            ax.set_title(panel["title"], fontsize=10, loc="left")
            ax.tick_params(labelsize=7)
            for q in queries({"uid": dash["uid"], "panels": [panel]}, variables):
                if q.kind in ("stat", "bargauge", "table"):
                    result = api("query", query=q.expr)["result"]
                    labels = [legend(q.legend, r["metric"]) for r in result]
                    values = [float(r["value"][1]) for r in result]
                    ax.barh(labels, values, alpha=0.7, label=q.ref)
                    for y, v in enumerate(values):
                        ax.text(v, y, f" {v:.4g}", va="center", fontsize=7)
                else:
                    result = api("query_range", query=q.expr, start=str(start), end=str(end),
                                 step=str(step))["result"]
                    for series in result:
                        xs = [float(t) - end for t, _ in series["values"]]
                        ys = [float(v) for _, v in series["values"]]
                        ax.plot([x / 60 for x in xs], ys, linewidth=1,
                                label=legend(q.legend, series["metric"])[:40])
                    ax.set_xlabel("minutes", fontsize=7)
            ax.set_ylabel(unit, fontsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="upper left")
        fig.suptitle(dash["title"], fontsize=13)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-panels",
        description="Render every panel of the visrec Grafana dashboards to PNG (one image per "
                    "dashboard) from a Prometheus server, for readers without Grafana.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus URL")
    p.add_argument("--out", type=Path, default=Path("artifacts/monitoring"),
                   help="folder for the PNG files")
    p.add_argument("--minutes", type=float, default=15.0, help="time range to plot")
    p.add_argument("--dashboard", action="append", dest="names",
                   help="only this dashboard (repeatable): overview, experiments, triton, gpu, "
                        "milvus")
    args = p.parse_args(argv)
    for path in render(args.prometheus, args.out, args.names, args.minutes):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
