"""Prometheus configuration, alert rules and Grafana dashboards, checked as code."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.support import ROOT
from visrec.local.panels import dashboards, queries
from visrec.local.prometheus_server import local_config

PROM = ROOT / "monitoring" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: scripts/setup installs Debian's prometheus"
    return subprocess.run([binary, *args], cwd=PROM, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_check_config():
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_rules():
    proc = promtool("check", "rules", "rules/visrec.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rule_unit_tests_pass():
    proc = promtool("test", "rules", "tests/visrec.rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_test_case_where_it_fires():
    rules = yaml.safe_load((PROM / "rules" / "visrec.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "tests" / "visrec.rules.test.yml").read_text())
    fired = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])
             if a.get("exp_alerts")}
    assert alerts == fired, f"alerts without a firing test: {sorted(alerts - fired)}"
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_scrape_jobs_cover_every_service():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"visrec-gateway", "triton", "milvus", "dcgm-exporter"}
    # Found by DNS on the compose network: every replica, and no target for a service that
    # does not run (the DCGM exporter without GPUs).
    found = {name: (j["dns_sd_configs"][0]["names"], j["dns_sd_configs"][0]["port"])
             for name, j in jobs.items()}
    assert found == {"visrec-gateway": (["gateway"], 9464), "triton": (["triton"], 8002),
                     "milvus": (["milvus"], 9091), "dcgm-exporter": (["dcgm-exporter"], 9400)}
    compose = yaml.safe_load((PROM.parent.parent / "docker-compose.prod.yml").read_text())
    for names, _ in found.values():
        assert names[0] in compose["services"], names


def test_local_config_keeps_jobs_and_rules_and_points_at_local_ports():
    cfg = local_config({"triton": ["127.0.0.1:18002"]}, scrape_interval="1s")
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["triton"]
    assert cfg["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:18002"]}]
    assert "dns_sd_configs" not in cfg["scrape_configs"][0] and "alerting" not in cfg
    assert cfg["rule_files"][0].endswith("monitoring/prometheus/rules/*.yml")
    with pytest.raises(Exception, match="no scrape job named"):
        local_config({"nope": ["x:1"]})


DASHBOARDS = dashboards()


def test_the_five_dashboards_exist():
    assert set(DASHBOARDS) == {"overview", "experiments", "triton", "gpu", "milvus"}
    assert len({d["uid"] for d in DASHBOARDS.values()}) == 5


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_lint(name):
    dash = DASHBOARDS[name]
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables and "namespace" in variables
    for p in panels:
        where = f"{name}: panel {p['id']} {p['title']!r}"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        assert p["targets"], f"{where} has no query"
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, where
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", where
            used = set(re.findall(r"\$\{?(\w+)", t["expr"])) - {"__rate_interval", "__interval"}
            assert used <= variables, f"{where} uses undefined variables {used - variables}"
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"
            assert v["includeAll"] and v["allValue"] == ".*"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_parses(name):
    """promtool's parser has no 'check expression'; Prometheus's own parse endpoint is tested
    with real data in tests/integration/test_monitoring.py. Here: balanced and non-empty."""
    for q in queries(DASHBOARDS[name]):
        assert q.expr.count("(") == q.expr.count(")"), q
        assert q.expr.count("{") == q.expr.count("}"), q
        assert "$" not in q.expr, f"unexpanded variable in {q}"
