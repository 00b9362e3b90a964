"""The whole loop on real SKAB partitions: real aggregator and workers over loopback, what they send, what they serve."""

import json

import httpx
import numpy as np
import pytest

from services.config import load_settings
from services.protocol.scaling import Scaler
from services.data.sources import load_node
from services.model.autoencoder import build_autoencoder, set_flat_weights
from services.model.layout import count_parameters
from services.model.scoring import calibrate_threshold
from services.model.training import reconstruction_scores
from services.protocol.codec import decode_weights

SETTINGS = load_settings()
N_PARAMS = count_parameters(SETTINGS.input_width, SETTINGS.model.hidden)


def updates_by_round(proxy) -> dict[int, dict[str, dict]]:
    """Every accepted update body the workers sent, by round and by worker token."""
    tokens = {w.token: w.id for w in SETTINGS.workers}
    rounds: dict[int, dict[str, dict]] = {}
    for r in proxy.requests:
        if r["method"] == "POST" and r["path"].endswith("/updates"):
            round_no = int(r["path"].split("/")[3])
            worker = tokens[r["headers"]["authorization"].removeprefix("Bearer ")]
            rounds.setdefault(round_no, {})[worker] = {
                "weights": decode_weights(r["body"], N_PARAMS),
                "samples": int(r["headers"]["x-sample-count"]),
            }
    return rounds


def test_workers_complete_rounds_and_global_model_is_sample_weighted_mean(trained_stack):
    status = trained_stack.final_status
    assert status["rounds_done"] == 2 and len(status["history"]) == 2
    sent = updates_by_round(trained_stack.proxy)
    assert set(sent) == {1, 2}
    # Recompute round 2's FedAvg from the bytes the workers put on the wire.
    updates = sent[2]
    assert set(updates) == {"valve1", "valve2", "other"}
    total = sum(u["samples"] for u in updates.values())
    expected = sum(u["weights"].astype(np.float64) * u["samples"] for u in updates.values()) / total
    with httpx.Client(base_url=trained_stack.agg_url) as client:
        r = client.get("/v1/model", headers={"Authorization": f"Bearer {SETTINGS.workers[0].token}"})
    assert r.status_code == 200 and r.headers["x-model-round"] == "2"
    published = decode_weights(r.content, N_PARAMS, r.headers["x-content-sha256"])
    np.testing.assert_allclose(published, expected, rtol=1e-6, atol=1e-7)
    # Samples per worker are the first 400 rows of each of its experiment files.
    assert {w: u["samples"] for w, u in updates.items()} == {"valve1": 16 * 400, "valve2": 4 * 400, "other": 14 * 400}


def test_only_weights_and_aggregates_cross_the_wire(trained_stack):
    requests = trained_stack.proxy.requests
    assert requests, "the workers sent nothing through the proxy"
    for r in requests:
        if r["path"].endswith("/updates"):
            assert len(r["body"]) == N_PARAMS * 4, "an update must be exactly the model's float32 weights"
        elif r["path"].endswith("/join"):
            body = json.loads(r["body"])
            assert set(body) == {"spec_hash", "sample_count", "stats", "role"}
            assert body["role"] == "train"
            assert set(body["stats"]) == {"count", "sum", "sum_sq", "min", "max"}
            for key in ("sum", "sum_sq", "min", "max"):  # one aggregate per feature, no rows
                assert len(body["stats"][key]) == len(SETTINGS.data.features)
        elif r["path"].endswith("/telemetry"):  # dashboard counters: scalars only, never rows or scores
            body = json.loads(r["body"])
            assert set(body) <= {"boot_id", "phase", "model_round", "threshold", "detect_requests", "rows_scored",
                                 "anomalies_flagged", "training_loss", "open_alarms", "drift_events",
                                 "buffer_rows", "precision", "precision_reason"}  # int8|fp32 and why: aggregates
            assert not any(isinstance(v, (list, dict)) for v in body.values())
        elif r["path"].endswith("/report"):  # rows not yet trained on, drift, model versions: counts and figures
            body = json.loads(r["body"])
            assert set(body) == {"new_rows", "drift", "drift_events", "served_round", "pinned", "versions",
                                 "directive"}
            assert isinstance(body["new_rows"], int) and isinstance(body["drift_events"], int)
            directive = body["directive"]  # how the fleet's newest model directive went here: scalars only
            assert directive is None or not any(isinstance(v, (list, dict)) for v in directive.values())
            for version in body["versions"]:
                assert set(version) <= {"round", "version", "status", "reason", "figures"}
                assert not any(isinstance(v, (list, dict)) for v in version["figures"].values())
        else:
            assert r["method"] == "GET" and r["body"] == b"", f"unexpected request {r['method']} {r['path']}"


def test_merged_scaler_equals_pooled_training_rows(trained_stack):
    """The federated mean/std equal what a central server would compute from all training rows."""
    state = json.loads((trained_stack.tmp / "aggregator" / "state.json").read_text())
    rows = np.concatenate([load_node(SETTINGS, w).train_raw() for w in SETTINGS.workers]).astype(np.float64)
    np.testing.assert_allclose(state["scaler"]["mean"], rows.mean(0), rtol=1e-9)
    np.testing.assert_allclose(state["scaler"]["std"], rows.std(0), rtol=1e-6)


@pytest.mark.parametrize("worker", ["valve1", "other"])
def test_int8_detect_agrees_with_torch_fp32_on_held_out_rows(trained_stack, worker):
    """POST /detect (int8 ONNX) against the torch fp32 model on the same held-out rows; each request brings its
    run's first 400 rows as "baseline", as SKAB's protocol (and data.baseline: run) scales a run by them."""
    state_dir = trained_stack.tmp / worker
    state = json.loads((state_dir / "state.json").read_text())
    model = build_autoencoder(SETTINGS.input_width, SETTINGS.model.hidden)
    served = state["files"][f"{state['served_id']}/global.f32"]  # the served version's weights
    set_flat_weights(model, decode_weights((state_dir / served).read_bytes(), N_PARAMS))
    scaler = Scaler(**state["scaler"])
    node = load_node(SETTINGS, SETTINGS.worker(worker))
    fp32_threshold = calibrate_threshold(reconstruction_scores(model, node.windows(scaler, "train")),
                                         SETTINGS.threshold)
    int8_scores, fp32_scores, int8_flags, fp32_flags = [], [], [], []
    with httpx.Client(base_url=trained_stack.worker_url(worker), timeout=30) as client:
        for e, inputs in zip(node.runs, node.run_inputs(scaler)):
            r = client.post("/detect", json={"baseline": e.values[:400].tolist(), "samples": e.values[400:].tolist()})
            assert r.status_code == 200, r.text
            answer = r.json()
            assert len(answer["scores"]) == len(e.values) - 400 and answer["model"] == "int8"
            torch_scores = reconstruction_scores(model, inputs)[400:]
            int8_scores.append(np.array(answer["scores"]))
            int8_flags.append(np.array(answer["is_anomaly"]))
            fp32_scores.append(torch_scores)
            fp32_flags.append(torch_scores > fp32_threshold)
    int8_scores, fp32_scores = np.concatenate(int8_scores), np.concatenate(fp32_scores)
    relative = np.abs(int8_scores - fp32_scores) / np.maximum(fp32_scores, 1e-6)
    # Stated tolerance: median relative difference under 10 %, and a rank correlation near 1.
    assert np.median(relative) < 0.10, f"median relative difference {np.median(relative):.3f}"
    ranks = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    assert np.corrcoef(ranks(int8_scores), ranks(fp32_scores))[0, 1] > 0.98
    agreement = np.mean(np.concatenate(int8_flags) == np.concatenate(fp32_flags))
    assert agreement >= 0.99, f"int8 and fp32 flag different rows: agreement {agreement:.4f}"


def test_workers_report_held_out_figures(trained_stack):
    for w in trained_stack.workers:
        status = trained_stack.worker_status(w)
        e = status["evaluation"]
        assert status["model_round"] == 2 and status["threshold"] > 0
        assert 0 <= e["f1"] <= 1 and 0 <= e["far"] <= 100 and 0 <= e["roc_auc"] <= 1  # quality: tests/evaluation
        assert e["rows"] == sum(c for c in e["counts"].values())
