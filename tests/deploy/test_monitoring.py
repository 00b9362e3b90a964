"""deploy/monitoring: the alerts checked and unit-tested by Prometheus' own promtool, the PrometheusRule equal to
the plain rules file, the dashboard's queries valid PromQL, and every metric a rule or a panel queries exported by a
real aggregator and a real worker (started on loopback and scraped)."""

from __future__ import annotations

import json
import re
import shutil

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import Stack, missing_tool

from .conftest import REPO, run, tool

pytestmark = pytest.mark.deploy

MONITORING = REPO / "deploy" / "monitoring"
PROMTOOL_TESTS = REPO / "tests" / "deploy" / "promtool" / "alerts.test.yaml"
METRIC = re.compile(r"\bfedad_[a-zA-Z0-9_]+")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing_tool("promtool not found: apt-get install prometheus (Debian's package ships it)")
    return found


def rule_groups() -> list[dict]:
    return yaml.safe_load((MONITORING / "alerts.rules.yaml").read_text())["groups"]


def dashboard() -> dict:
    return json.loads((MONITORING / "fedad-dashboard.json").read_text())


def panel_queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_queries() -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for g in rule_groups() for r in g["rules"]]


def test_promtool_checks_the_rules_file_and_the_prometheus_rule(tmp_path):
    run([promtool(), "check", "rules", str(MONITORING / "alerts.rules.yaml")])
    operator = yaml.safe_load((MONITORING / "prometheus-rule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == rule_groups(), "prometheus-rule.yaml must carry alerts.rules.yaml's groups"
    (tmp_path / "operator.rules.yaml").write_text(yaml.safe_dump({"groups": operator["spec"]["groups"]}))
    run([promtool(), "check", "rules", str(tmp_path / "operator.rules.yaml")])
    assert {r["alert"] for g in rule_groups() for r in g["rules"]} >= {
        "FedadPumpAlarm", "FedadModelRefused", "FedadDrift", "FedadWorkerNotReporting", "FedadRoundOverdue"}


def test_promtool_unit_tests_pass_and_cover_every_alert():
    out = run([promtool(), "test", "rules", str(PROMTOOL_TESTS)], cwd=PROMTOOL_TESTS.parent).stdout
    assert "SUCCESS" in out
    tested = {case["alertname"] for t in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
              for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert tested == {name for name, _ in rule_queries()}, "every alert has a test in which it fires"


def test_promtool_unit_tests_fail_on_a_broken_rule(tmp_path):
    """The unit tests can fail: with the alarm rule's threshold changed they do."""
    groups = rule_groups()
    groups[0]["rules"][0]["expr"] = groups[0]["rules"][0]["expr"].replace("== 1", "== 2")
    (tmp_path / "deploy" / "monitoring").mkdir(parents=True)
    (tmp_path / "deploy" / "monitoring" / "alerts.rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests" / "deploy" / "promtool").mkdir(parents=True)
    copy = tmp_path / "tests" / "deploy" / "promtool" / "alerts.test.yaml"
    copy.write_text(PROMTOOL_TESTS.read_text())
    result = run([promtool(), "test", "rules", str(copy)], cwd=copy.parent, check=False)
    assert result.returncode != 0 and "FedadPumpAlarm" in result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each panel query as a recording rule: promtool parses every one of them."""
    queries = panel_queries()
    assert len(queries) >= 15
    rules = [{"record": f"fedad:panel_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    (tmp_path / "panels.rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    run([promtool(), "check", "rules", str(tmp_path / "panels.rules.yaml")])


def test_dashboard_ships_in_a_configmap_for_grafanas_sidecar():
    docs = [d for d in yaml.safe_load_all(run([tool("kubectl"), "kustomize", "deploy/monitoring"]).stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "PrometheusRule", "ServiceMonitor"]
    board = next(d for d in docs if d["metadata"]["name"] == "fedad-grafana-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["fedad-dashboard.json"]) == dashboard()
    titles = {p["title"] for p in dashboard()["panels"] if p["type"] == "row"}
    assert titles == {"Fleet", "Rounds", "Alarms", "Device data", "Models and drift"}
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http" and monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_servicemonitor_selects_the_services_of_both_overlays():
    """Its selector matches the aggregator's and every worker's Service, whose port it scrapes is named http."""
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    for overlay in ("k3s", "gcp-kubeedge"):
        docs = [d for d in yaml.safe_load_all(run([tool("kubectl"), "kustomize", f"deploy/overlays/{overlay}"]).stdout)
                if d]
        services = [d for d in docs if d["kind"] == "Service"]
        assert len(services) == 4
        for s in services:
            assert selector.items() <= s["metadata"]["labels"].items(), s["metadata"]["name"]
            assert [p["name"] for p in s["spec"]["ports"]] == ["http"]


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, also for families that have no sample yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"],
                    "summary": ["_sum", "_count", ""]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes} | {s.name for s in family.samples}
    return names


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> set[str]:
    """/metrics of a real aggregator and a real worker (MQTT ingestion and twin reports on, so their families are
    registered; no broker is needed for that), before any round: the families exist from the start."""
    tmp = tmp_path_factory.mktemp("scrape")
    stack = Stack(tmp, workers=["valve1"], min_workers=2, quorum=2,
                  overrides={"FEDAD__INGEST__MQTT__ENABLED": "true", "FEDAD__INGEST__MQTT__PORT": "1"})
    try:
        stack.start()
        pages = [httpx.get(f"{url}/metrics", timeout=10).text for url in (stack.agg_url, stack.worker_url("valve1"))]
    finally:
        stack.stop()
    return set().union(*(exported_names(p) for p in pages))


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_queried_metric_is_exported_by_the_running_services(scraped, source):
    queries = rule_queries() if source == "rules" else panel_queries()
    used = {(name, m) for name, expr in queries for m in METRIC.findall(expr)}
    assert used
    missing = sorted(f"{name}: {m}" for name, m in used if m not in scraped)
    assert not missing, f"queried but exported by neither service: {missing}"
