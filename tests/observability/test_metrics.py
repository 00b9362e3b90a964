"""/metrics on the real aggregator and workers: Prometheus text that prometheus-client's own parser reads, holding the
series the issue lists with the values the run must have produced, and bounded label sets."""

from __future__ import annotations

import math
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from observability.helpers import ROUNDS
from services.model.layout import count_parameters

REPO = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """name of each sample → {sorted label items: value}."""
    r = httpx.get(f"{url}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    assert name in samples, f"{name} missing from /metrics; have {sorted(samples)}"
    key = tuple(sorted(labels.items()))
    assert key in samples[name], f"{name}{labels} missing; have {list(samples[name])}"
    return samples[name][key]


def assert_bounded(samples, limit: int = 20) -> None:
    """No family grows a label value per request: few label sets, short code-like values."""
    for name, series in samples.items():
        assert len(series) <= limit, f"{name} has {len(series)} label sets"
        for labels in series:
            for key, v in labels:
                assert len(v) <= 40 and " " not in v, f"{name} label {key}={v!r} looks like a message"


def test_aggregator_metrics(observed_stack):
    s = scrape(observed_stack.agg_url)
    settings = observed_stack.settings
    n_workers = len(observed_stack.workers)
    assert value(s, "fedad_aggregator_rounds_done") == ROUNDS
    assert value(s, "fedad_aggregator_rounds_planned") == ROUNDS
    assert value(s, "fedad_aggregator_phase", phase="idle") + value(s, "fedad_aggregator_phase", phase="done") == 1
    assert value(s, "fedad_aggregator_phase", phase="training") == 0
    assert value(s, "fedad_aggregator_rounds_completed_total", closed_by="min_workers") == ROUNDS
    assert value(s, "fedad_aggregator_round_duration_seconds_count") == ROUNDS
    history = observed_stack.final_status["history"]
    assert value(s, "fedad_aggregator_round_duration_seconds_sum") == pytest.approx(
        sum(h["duration_s"] for h in history), abs=0.01)
    assert value(s, "fedad_aggregator_updates_accepted_total", duplicate="false") == ROUNDS * n_workers
    update_bytes = count_parameters(settings.input_width, settings.model.hidden) * 4
    received = value(s, "fedad_aggregator_update_received_bytes_total")
    # every update taken (a retried duplicate too), plus the 16-byte body refused with 409; the 401 one was refused
    # before its body was read
    taken = sum(s["fedad_aggregator_updates_accepted_total"].values())
    assert received == taken * update_bytes + 16
    # Refusals by reason code, not by message.
    assert value(s, "fedad_aggregator_updates_refused_total", reason="no_open_round") >= 1
    assert value(s, "fedad_aggregator_updates_refused_total", reason="missing_token") >= 1
    assert value(s, "fedad_aggregator_requests_refused_total", endpoint="updates", status="401") >= 1
    assert value(s, "fedad_aggregator_workers_joined") == n_workers
    assert value(s, "fedad_aggregator_last_round_mean_loss") == pytest.approx(history[-1]["mean_loss"])
    for w in observed_stack.workers:
        assert value(s, "fedad_aggregator_worker_last_loss", worker=w) == pytest.approx(
            history[-1]["workers"][w]["loss"])
        assert value(s, "fedad_aggregator_worker_last_seen_timestamp_seconds", worker=w) > 1e9
    assert value(s, "fedad_aggregator_telemetry_reports_total") >= n_workers
    assert value(s, "process_resident_memory_bytes") > 0
    assert_bounded(s)


@pytest.mark.parametrize("worker", ["valve1", "valve2", "other"])
def test_worker_metrics(observed_stack, worker):
    s = scrape(observed_stack.worker_url(worker))
    sent = observed_stack.traffic[worker]
    status = observed_stack.worker_status(worker)
    assert value(s, "fedad_worker_info", worker=worker, model=status["model"]) == 1
    assert value(s, "fedad_worker_detect_requests_total", status="200") == sent["requests"]
    assert value(s, "fedad_worker_detect_rows_scored_total") == sent["rows"]
    assert value(s, "fedad_worker_detect_anomalies_flagged_total") == sent["anomalies"]
    assert value(s, "fedad_worker_detect_latency_seconds_count") == sent["requests"]
    assert 0 < value(s, "fedad_worker_detect_latency_seconds_sum") < 30
    assert value(s, "fedad_worker_detect_latency_seconds_bucket", le="+Inf") == sent["requests"]
    assert value(s, "fedad_worker_model_round") == ROUNDS
    assert value(s, "fedad_worker_threshold") == pytest.approx(status["threshold"])
    loss = value(s, "fedad_worker_training_loss")
    assert math.isfinite(loss) and loss > 0
    assert loss == pytest.approx(observed_stack.final_status["history"][-1]["workers"][worker]["loss"])
    assert value(s, "fedad_worker_training_rounds_total") == ROUNDS
    assert 0 <= value(s, "fedad_worker_heldout_f1") <= 1
    assert 0 <= value(s, "fedad_worker_heldout_false_alarm_ratio") <= 1
    if worker == "valve1":
        assert value(s, "fedad_worker_detect_requests_total", status="422") == 1
    assert_bounded(s)


def test_dashboard_json_counts_match_the_workers(observed_stack):
    d = observed_stack.dashboard
    assert [w["id"] for w in d["workers"]] == observed_stack.workers
    for w in d["workers"]:
        sent = observed_stack.dashboard_traffic[w["id"]]
        assert w["rows_scored"] == sent["rows"] and w["anomalies_flagged"] == sent["anomalies"]
        assert w["model_round"] == ROUNDS and w["joined"]
    assert d["losses"]["round"] == list(range(1, ROUNDS + 1))
    assert sum(sum(series) for series in d["anomalies"]["anomalies"].values()) == sum(
        t["anomalies"] for t in observed_stack.dashboard_traffic.values())


def documented_metrics(section: str) -> set[str]:
    """Metric names in the table under ``### <section>`` of docs/observability.md."""
    text = (REPO / "docs" / "observability.md").read_text()
    table = text.split(f"### {section}\n", 1)[1].strip().split("\n\n", 1)[0]
    return set(re.findall(r"^\| `(fedad_[a-z0-9_]+)`", table, flags=re.M))


def exposed_families(url: str) -> set[str]:
    """Family names as the text format declares them (# TYPE), counters with their _total."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    families = set()
    for name, kind in re.findall(r"^# TYPE (fedad_\S+) (\S+)", text, flags=re.M):
        families.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return families


def test_docs_list_exactly_the_metrics_served(observed_stack):
    assert exposed_families(observed_stack.agg_url) == documented_metrics("Aggregator")
    assert exposed_families(observed_stack.worker_url(observed_stack.workers[0])) == documented_metrics("Worker")
