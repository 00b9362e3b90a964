"""The observability parts without servers: /detect counters, the telemetry board, refusal reasons, config."""

from __future__ import annotations

import numpy as np
import pytest

from services.config import ConfigError, load_settings
from services.observability.metrics import LATENCY_BUCKETS, DetectStats, endpoint_of
from services.observability.telemetry import Telemetry, TelemetryBoard


def test_detect_stats_count_exactly_across_flushes():
    stats = DetectStats(keep=10)
    rng = np.random.default_rng(0)
    expected_rows = expected_anomalies = 0
    for i in range(DetectStats.FLUSH_EVERY + 7):  # one automatic flush, then a backlog flushed on read
        scores = rng.random(1 + i % 5)
        flags = scores > 0.7
        stats.scored(scores, flags, 0.7, seconds=LATENCY_BUCKETS[i % len(LATENCY_BUCKETS)])
        expected_rows += len(scores)
        expected_anomalies += int(flags.sum())
    stats.refused(422)
    assert stats.rows == expected_rows and stats.anomalies == expected_anomalies
    assert stats.requests == DetectStats.FLUSH_EVERY + 7 + 1 and stats.by_status[422] == 1
    assert sum(stats.latency_counts) == DetectStats.FLUSH_EVERY + 7
    assert stats.latency_counts[-1] == 0, "a latency equal to a bucket's bound belongs in that bucket"


def test_recent_scores_are_the_last_rows_oldest_first():
    stats = DetectStats(keep=5)
    stats.scored(np.array([1.0, 2.0, 3.0]), np.array([False] * 3), 2.5, 0.001)
    stats.scored(np.array([4.0, 5.0, 6.0, 7.0, 8.0, 9.0]), np.array([True] * 6), 3.5, 0.001)  # larger than keep
    recent = stats.recent()
    assert recent["row"] == [4, 5, 6, 7, 8] and recent["score"] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert recent["threshold"] == [3.5] * 5


def report(boot="a", rows=0, anomalies=0, **kw) -> Telemetry:
    return Telemetry(boot_id=boot, rows_scored=rows, anomalies_flagged=anomalies, **kw)


def test_board_counts_deltas_baselines_first_reports_and_survives_worker_restarts():
    board = TelemetryBoard(["w1", "w2"], bucket_s=10)
    board.report("w1", report(rows=500, anomalies=50), now=100)  # first report since the aggregator started
    board.report("w1", report(rows=600, anomalies=58), now=105)
    board.report("w2", report(rows=10, anomalies=1), now=111)
    board.report("w1", report(boot="b", rows=20, anomalies=3), now=112)  # w1 restarted: counts from zero
    snap = board.snapshot()
    assert snap["time"] == [100, 110]
    assert snap["anomalies"] == {"w1": [8, 3], "w2": [0, 0]}
    assert snap["rows"]["w1"] == [100, 20]
    assert snap["latest"]["w1"]["boot_id"] == "b"


def test_board_memory_is_bounded():
    board = TelemetryBoard(["w1"], bucket_s=1, keep=50)
    for t in range(200):
        board.report("w1", report(rows=t, anomalies=t), now=float(t))
    assert len(board.snapshot()["time"]) == 50


def test_telemetry_refuses_non_finite_values():
    with pytest.raises(ValueError):
        Telemetry(boot_id="a", threshold=float("nan"))
    with pytest.raises(ValueError):
        Telemetry(boot_id="a", rows_scored=-1)


@pytest.mark.parametrize("path, endpoint", [("/v1/rounds/3/updates", "updates"), ("/v1/workers/w/join", "join"),
                                            ("/v1/workers/w/telemetry", "telemetry"), ("/v1/model", "model"),
                                            ("/v1/rounds/3/updates/x", "other"), ("/", "other")])
def test_endpoint_label_is_a_closed_set(path, endpoint):
    assert endpoint_of(path) == endpoint


def test_logging_and_dashboard_settings_are_validated():
    settings = load_settings(environ={"FEDAD__LOGGING__FORMAT": "json", "FEDAD__LOGGING__LEVEL": "debug"})
    assert (settings.logging.format, settings.logging.level) == ("json", "DEBUG")
    with pytest.raises(ConfigError, match="logging.format"):
        load_settings(environ={"FEDAD__LOGGING__FORMAT": "xml"})
    with pytest.raises(ConfigError, match="dashboard.telemetry_interval_s"):
        load_settings(environ={"FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "-1"})
