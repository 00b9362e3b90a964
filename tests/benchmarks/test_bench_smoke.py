"""The benchmark scripts still run: each once with tiny sizes (real services on loopback), figures checked for
shape and sanity, not speed. Benchmarks are scripts (BENCHMARKS.md), not timed tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_script(name: str, tmp_path: Path, *args: str, timeout: int = 240) -> dict:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAD__")}
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--json", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"benchmarks.{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "# command: python -m benchmarks." in proc.stdout and "nproc=" in proc.stdout
    assert "targets:" in proc.stdout or name == "resources"
    return json.loads(out.read_text())


def test_detect_script(tmp_path):
    r = run_script("detect", tmp_path, "--worker", "valve2", "--batches", "1,16", "--duration", "1", "--repeat", "1",
                   "--inproc-number", "16", "--inproc-repeat", "1", "--connections", "2", "--bulk-connections", "1")
    http = r["http"]
    assert set(http) == {"constant", "json 1", "binary 1", "json 16", "binary 16"}
    for name, v in http.items():
        assert v["req_per_s"] > 0 and v["errors"] == 0, (name, v)
    assert http["json 16"]["rows_per_s"] == pytest.approx(16 * http["json 16"]["req_per_s"])
    stages = r["in_process"]["batches"]["1"]
    assert stages["ort_int8_raw"] > 0 and stages["torch_eager_forward"] > 0
    assert {"batch1_json_vs_constant", "int8_vs_torch_batch1", "binary16_vs_floor"} <= set(r["ratios"])


def test_aggregate_script(tmp_path):
    r = run_script("aggregate", tmp_path, "--n", "10,20", "--large-width", "64", "--large-hidden", "32",
                   "--repeat", "1")
    rows = r["rows"]
    assert [(x["model"], x["n"]) for x in rows] == [("default", 10), ("default", 20), ("large", 10), ("large", 20)]
    for x in rows:
        assert x["fedavg_s"] > 0 and x["fedavg_peak_mib"] > 0
        assert x["max_abs_diff"] < 1e-6, "streaming FedAvg equals the stacked weighted mean"


def test_round_script(tmp_path):
    r = run_script("round", tmp_path, "--clients", "4", "--rounds", "2")
    assert [x["clients"] for x in r["rows"]] == [4]
    for x in r["rows"]:
        assert [m["round"] for m in x["rounds"]] == [1, 2]
        assert 0 < x["overhead_median_s"] < 30 and x["in_process_median_s"] > 0


def test_resources_script(tmp_path):
    r = run_script("resources", tmp_path, "--worker", "valve2", "--rounds", "1", "--epochs", "1",
                   "--serve-seconds", "1", "--idle-seconds", "0.5", "--epoch-repeat", "1", "--wide-rows", "2000")
    assert r["rss_idle_no_model_mib"] > 0 and r["rss_idle_with_model_mib"] > 0
    assert r["serving_imports_torch"] is False and r["training_processes"][0]["peak_rss_mib"] > 100
    assert r["wide"]["features"] == 115 and r["wide"]["training_peak_rss_mib"] > 100
    assert r["wide"]["serving_imports_torch"] is False
    assert r["onnx_bytes"]["fp32"] > 0 and r["onnx_bytes"]["int8"] > 0
    assert r["bytes_up_per_round"] > r["update_body_bytes"], "the update body crossed the relay"
    assert r["epoch_in_process"]["cpu_s"] > 0 and r["serving"]["1"]["req_per_s"] > 0


def test_streams_script(tmp_path):
    import shutil

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    r = run_script("streams", tmp_path, "--duration", "1", "--repeat", "1", "--mqtt-rows", "200", "--devices", "2",
                   "--rates", "50", "--latency-seconds", "3", "--connections", "2", timeout=300)
    http = r["http"]
    assert set(http) == {"constant", "stream 1 row"}
    for name, v in http.items():
        assert v["req_per_s"] > 0 and v["errors"] == 0, (name, v)
    mqtt = r["mqtt"]
    assert mqtt["worker_rows_per_s"] > 0 and mqtt["bare_rows_per_s"] > 0
    assert [x["rows"] for x in mqtt["runs"]] == [200]
    [latency] = r["latency"]
    assert latency["rate"] == 50 and latency["events"]["opened"] >= 1, latency  # the spikes opened alarms
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert r["ingest"]["counts"]["rows_scored"] >= 200 and not r["ingest"]["refused"], r["ingest"]
    assert {"stream_row_vs_constant", "mqtt_worker_vs_bare"} <= set(r["ratios"])


def test_late_join_script(tmp_path):
    r = run_script("late_join", tmp_path, "--rounds", "1", "--epochs", "1", "--interval", "0.1")
    assert set(r["campaign_first_served"]) == {"valve1", "valve2", "other"}
    for name, first in [*r["campaign_first_served"].items(), ("late", r["late"]), ("restart", r["restart"])]:
        assert 0 < first["readyz"] < 300 and 0 < first["detect"] < 300, (name, first)
    assert r["late"]["model_round"] == r["rounds"] == 1, "the late worker serves the campaign's last model"
    assert r["late"]["aggregator_rounds_done"] >= 1
    assert r["ratios"]["late_vs_fastest_campaign_worker"] > 0 and r["ratios"]["late_vs_restart"] > 0


def test_serving_rss_script(tmp_path):
    r = run_script("serving_rss", tmp_path, "--rounds", "1", "--requests", "2")
    for worker in ("valve1", "valve2", "other"):
        figures = r["mib"]["this"][worker]
        assert 50 < figures["VmRSS"] <= figures["VmHWM"] < 1024, (worker, figures)


def test_fleet_script(tmp_path):
    r = run_script("fleet", tmp_path, "--nodes", "120", "--sample", "30", "--rounds", "2", "--connections", "16",
                   "--flood", "40", "--storm-nodes", "100", "--buffer", "10", "--max-staleness", "20",
                   "--train-s", "1", "--async-s", "6", "--site-nodes", "210", "--site-share", "0.5", timeout=420)
    e = r["enroll"]
    assert e["enroll"]["n"] == 120 and e["join"]["n"] == 120 and e["joined"] == 120
    assert e["bad_credentials"]["all_4xx"] and e["bad_credentials"]["stored_nothing"]
    assert e["storm"]["no_acknowledged_enrollment_lost"] and e["storm"]["log"]["damaged_lines"] == 0
    assert e["reference"]["enroll_s"] > 0 and e["rss_enrolled_mib"] > 0
    s = r["sampled"]
    assert [x["sampled"] for x in s["rounds"]] == [30, 30] and all(x["refused"] == 0 for x in s["rounds"])
    assert len(s["reference"]["upload_to_model_s"]) == 2
    a = r["async"]
    assert a["versions"] >= 2 and a["no_acknowledged_update_lost"]
    assert a["publish_s"]["before kill"]["max"] > 0 and set(a["windows"]) == {"before kill", "after restart"}
    assert a["reference"]["versions"] == 5
    sites = r["sites"]  # 105 sampled per site round: more than a history record lists, all read back from rounds.log
    assert sites["every_round_closed_with_all_3_sites"] and sites["no_acknowledged_update_lost"]
    assert [x["round"] for x in sites["root_rounds"]] == [1, 2]


def test_precision_choice_script(tmp_path):
    r = run_script("precision_choice", tmp_path, "--worker", "valve2", "--repeat", "1", "--epochs", "1")
    assert r["held_out_rows"] > 0 and all(len(v) == 1 and v[0] > 0 for v in r["cpu_ms"].values())
    assert r["ratio"] > 0 and r["choice"]["served"] in ("int8", "fp32") and r["choice"]["roc_auc_fp32"] > 0.5
