"""Every model kind (dense, conv1d, lstm): the numpy layout the aggregator uses is the torch model's, training moves
the weights, the exported ONNX scores like torch, bad combinations are refused at config load, and a real federation
(aggregator + 2 workers as processes on loopback) trains each kind, serves /detect with it and stays within the
worker container's memory limit; the kinds comparison of the evaluation runs every kind in every mode."""

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from services.config import ConfigError, load_settings
from services.protocol.scaling import FeatureStats
from services.data.sources import load_node
from services.data.windows import Preprocessing
from services.model.autoencoder import build_autoencoder, get_flat_weights, set_flat_weights
from services.model.detector import AnomalyDetector, DetectorSpec
from services.model.layout import Architecture
from services.model.training import reconstruction_scores
from services.protocol.codec import decode_weights
from services.protocol.messages import TrainingPlan
from benchmarks.common import peak_rss_mib
from support import Stack

RAW = {"FEDAD__DATA__WINDOW_STATS": "[]"}
KIND_ENV = {
    "dense": {},
    "conv1d": {**RAW, "FEDAD__MODEL__KIND": "conv1d"},
    "lstm": {**RAW, "FEDAD__MODEL__KIND": "lstm", "FEDAD__SERVING__MODEL": "fp32"},
}
SMALL = {"FEDAD__WORKERS__VALVE1__PARTITION": "[valve1/0.csv]"}
CONTAINER_LIMIT_MIB = 512  # a training worker's memory limit (deploy/base/worker/worker.yaml, test_constrained.py)
REPO = Path(__file__).resolve().parents[2]


def settings_for(kind: str, **extra):
    return load_settings(environ={**KIND_ENV[kind], **SMALL, **extra})


@pytest.fixture(scope="module")
def small_node():
    """One SKAB run's training and held-out inputs, raw windows and window statistics, scaled like a worker does."""
    def inputs(settings):
        node = load_node(settings, settings.worker("valve1"))
        scaler = FeatureStats.from_rows(node.train_raw()).scaler()
        return node.windows(scaler, "train"), node.windows(scaler, "held_out"), node.default_reference(scaler)
    return inputs


@pytest.mark.parametrize("kind", KIND_ENV)
def test_layout_is_the_torch_models_and_numpy_init_loads_into_it(kind):
    settings = settings_for(kind)
    arch = Architecture.from_settings(settings)
    assert arch.kind == kind and arch.width == settings.input_width
    model = build_autoencoder(arch, seed=7)
    assert arch.shapes() == [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    assert arch.n_params == sum(p.numel() for p in model.parameters())
    initial = arch.initial_weights(7)
    assert initial.dtype == np.float32 and initial.size == arch.n_params
    fresh = build_autoencoder(arch)
    set_flat_weights(fresh, initial)  # what a worker does with the aggregator's first model
    assert np.array_equal(get_flat_weights(fresh).view(np.uint32), initial.view(np.uint32))
    # the seeded torch init and numpy's are the same draws, bit for bit
    assert np.array_equal(get_flat_weights(model).view(np.uint32), initial.view(np.uint32))
    x = torch.randn(3, arch.width)
    assert tuple(fresh(x).shape) == (3, arch.width)
    described = {"kind": kind, "width": arch.width, "shapes": [[n, list(s)] for n, s in arch.shapes()]}
    assert arch.spec_hash == hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]
    assert DetectorSpec.from_settings(settings).spec_hash == arch.spec_hash


def test_spec_hash_tells_kinds_windows_and_sizes_apart():
    hashes = {Architecture.from_settings(settings_for(kind)).spec_hash for kind in KIND_ENV}
    hashes.add(Architecture.from_settings(settings_for("conv1d", FEDAD__DATA__WINDOW="21")).spec_hash)
    hashes.add(Architecture.from_settings(settings_for("conv1d", FEDAD__MODEL__CONV1D__KERNEL="3")).spec_hash)
    hashes.add(Architecture.from_settings(settings_for("lstm", FEDAD__MODEL__LSTM__HIDDEN="8")).spec_hash)
    assert len(hashes) == 6


@pytest.mark.parametrize("window", [5, 7, 20, 33])
def test_conv1d_restores_any_window_length_from_one_kernel_up(window):
    arch = Architecture.from_settings(settings_for("conv1d", FEDAD__DATA__WINDOW=str(window)))
    model = build_autoencoder(arch)
    assert tuple(model(torch.randn(2, arch.width)).shape) == (2, arch.width)


@pytest.mark.parametrize("kind", KIND_ENV)
def test_partial_fit_trains_and_onnx_scores_equal_torch(kind, small_node, tmp_path):
    settings = settings_for(kind)
    train, held_out, reference = small_node(settings)
    assert train.shape[1] == settings.input_width
    if kind != "dense":
        assert settings.input_width == settings.data.window * 6  # raw windows of the six model channels
    detector = AnomalyDetector(DetectorSpec.from_settings(settings))
    before = detector.get_weights().copy()
    result = detector.partial_fit(train, TrainingPlan.from_settings(settings), seed=1, epochs=2)
    assert np.isfinite(result.loss) and len(result.epoch_losses) == 2
    assert result.epoch_losses[1] < result.epoch_losses[0]
    assert not np.array_equal(before, detector.get_weights())

    detector.calibrate(train, reference, workdir=tmp_path)
    model = build_autoencoder(detector.spec)
    set_flat_weights(model, detector.get_weights())
    torch_scores = reconstruction_scores(model, held_out)
    fp32 = detector.served_as("fp32", train)
    onnx_scores = fp32.score_inputs(held_out)
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-5, atol=1e-6 * float(torch_scores.max()))
    # the batch axis is dynamic: one row alone scores as it does in a batch
    np.testing.assert_allclose(fp32.score_inputs(held_out[5:6]), onnx_scores[5:6], rtol=1e-5)
    assert detector.threshold_ > 0 and detector.spec.served == ("fp32" if kind == "lstm" else "int8")


@pytest.mark.parametrize("env,key,reason", [
    ({**KIND_ENV["conv1d"], "FEDAD__DATA__WINDOW_STATS": "[mean, std]"}, "data.window_stats", "raw rows"),
    ({"FEDAD__MODEL__KIND": "lstm", "FEDAD__SERVING__MODEL": "fp32"}, "data.window_stats", "raw rows"),
    ({**KIND_ENV["conv1d"], "FEDAD__DATA__WINDOW": "4"}, "data.window (4)", "shorter than model.conv1d.kernel (5)"),
    ({**KIND_ENV["conv1d"], "FEDAD__MODEL__CONV1D__KERNEL": "4"}, "model.conv1d.kernel", "odd"),
    ({**KIND_ENV["conv1d"], "FEDAD__MODEL__CONV1D__CHANNELS": "[8, 0]"}, "model.conv1d.channels", ">= 1"),
    ({**RAW, "FEDAD__MODEL__KIND": "lstm", "FEDAD__SERVING__MODEL": "int8"}, "serving.model int8",
     "LSTM operators in float"),
    ({"FEDAD__MODEL__KIND": "transformer"}, "model.kind", "'dense', 'conv1d' or 'lstm'"),
])
def test_bad_model_configuration_is_refused_with_the_key_and_reason(env, key, reason):
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=env)
    assert key in str(refused.value) and reason in str(refused.value)


def test_an_architecture_that_cannot_compute_is_refused_without_config():
    """The aggregator and the detector build Architecture directly too: the same limits hold there."""
    for bad in (dict(kind="conv1d", width=24, channels=6, conv_channels=(8,), kernel=5),  # window 4 < kernel 5
                dict(kind="conv1d", width=60, channels=6, conv_channels=(8,), kernel=4),  # even kernel
                dict(kind="lstm", width=61, channels=6, lstm_hidden=4),  # not whole rows
                dict(kind="gru", width=60, channels=6)):
        with pytest.raises(ValueError):
            Architecture(**bad)
    spec = DetectorSpec.from_settings(settings_for("conv1d"))
    stats = Preprocessing(spec.prep.columns, spec.prep.window, ("mean", "std"), spec.prep.baseline)
    with pytest.raises(ValueError, match="raw windows"):
        replace(spec, prep=stats).architecture


def test_raw_window_kinds_load_when_consistent():
    for kind in ("conv1d", "lstm"):
        assert settings_for(kind).model.kind == kind
    assert load_settings(environ={**KIND_ENV["conv1d"], "FEDAD__DATA__WINDOW": "5"}).data.window == 5


def test_the_worker_memory_limit_is_the_one_tested():
    manifest = (REPO / "deploy/base/worker/worker.yaml").read_text()
    limit = re.search(r"limits:\s*\n(?:\s*cpu: \S+\s*\n)?\s*memory: (\d+)Mi", manifest)
    assert limit and int(limit.group(1)) == CONTAINER_LIMIT_MIB


@pytest.mark.parametrize("kind", ["dense", "conv1d", "lstm"])
def test_real_federation_trains_the_kind_and_serves_detect(kind, tmp_path):
    """Aggregator + 2 workers as processes, 1 round of 1 epoch on 2 small SKAB files; /detect then scores a
    held-out run with the federation's model of that kind, as torch scores it; each worker's training process
    (its peak resident memory in /v1/status last_training) stays under the container limit, and the serving
    process never imports torch."""
    overrides = {**KIND_ENV[kind], "FEDAD__WORKERS__VALVE1__PARTITION": "[valve1/0.csv]",
                 "FEDAD__WORKERS__VALVE2__PARTITION": "[valve2/0.csv]"}
    settings = load_settings(environ=overrides)
    arch = Architecture.from_settings(settings)
    stack = Stack(tmp_path, workers=("valve1", "valve2"), rounds=1, epochs=1, overrides=overrides).start()
    try:
        status = stack.wait_done(timeout=240)
        assert status["rounds_done"] == 1
        assert status["model"]["spec_hash"] == arch.spec_hash and status["model"]["parameters"] == arch.n_params
        with httpx.Client(base_url=stack.agg_url, timeout=30) as client:
            r = client.get("/v1/model", headers={"Authorization": f"Bearer {settings.workers[0].token}"})
        assert r.status_code == 200
        weights = decode_weights(r.content, arch.n_params, r.headers["x-content-sha256"])
        run = load_node(settings, settings.worker("valve1")).runs[0]
        baseline, samples = run.values[:400], run.values[400:]
        with httpx.Client(base_url=stack.worker_url("valve1"), timeout=30) as client:
            r = client.post("/detect", json={"baseline": baseline.tolist(), "samples": samples.tolist()})
        assert r.status_code == 200, r.text
        answer = r.json()
        precision = stack.worker_status("valve1")["precision"]  # auto: what its held-out rows chose, and why
        assert answer["model"] == precision["served"] and len(answer["scores"]) == len(samples), precision
        assert sum(answer["is_anomaly"]) > 0  # SKAB's valve1/0.csv holds a fault after its first 400 rows
        for worker in ("valve1", "valve2"):
            status = stack.worker_status(worker)
            training = status["last_training"]
            assert training["round"] == 1 and 50 < training["peak_rss_mib"] < CONTAINER_LIMIT_MIB, training
            assert not status["torch_loaded"]
            serving = peak_rss_mib(stack.worker_services[worker].pid)  # both live in one container while training
            assert serving + training["peak_rss_mib"] < CONTAINER_LIMIT_MIB, (serving, training)
    finally:
        stack.stop()
    spec = DetectorSpec.from_settings(settings)
    model = build_autoencoder(spec)
    set_flat_weights(model, weights)
    reference = spec.prep.reference(baseline, None)
    inputs = spec.prep.inputs(np.concatenate([baseline, samples]), reference)[len(baseline):]
    expected = reconstruction_scores(model, inputs)
    served = np.array(answer["scores"], dtype=np.float32)
    if answer["model"] == "fp32":
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    else:  # int8: the same ranking of rows, scores close
        ranks = lambda a: np.argsort(np.argsort(a))  # noqa: E731
        assert np.corrcoef(ranks(served), ranks(expected))[0, 1] > 0.98


def test_kinds_comparison_trains_every_kind_in_every_mode_and_tables_it(tmp_path):
    """services/evaluation/grid.py on three one-file workers, 1 round of 1 epoch: the config's kind (dense) from the
    full evaluation, conv1d and lstm trained in every mode, each with sizes, serving time and a training round in
    the worker's training process; one table row per kind and mode."""
    from services.evaluation.grid import evaluate_with_kinds
    from services.evaluation.kinds import kind_settings
    from services.evaluation.runner import Progress
    from services.evaluation.table import format_kinds_table

    settings = load_settings(environ={"FEDAD__FEDERATION__ROUNDS": "1", "FEDAD__MODEL__LOCAL_EPOCHS": "1",
                                      "FEDAD__WORKERS__VALVE1__PARTITION": "[valve1/0.csv]",
                                      "FEDAD__WORKERS__VALVE2__PARTITION": "[valve2/0.csv]",
                                      "FEDAD__WORKERS__OTHER__PARTITION": "[other/9.csv]"})
    lstm = kind_settings(settings, "lstm")
    assert lstm.data.window_stats == [] and lstm.serving.model == "fp32" and settings.data.window_stats
    lines = []
    results = evaluate_with_kinds(settings, tmp_path, ("federated", "centralised", "local"),
                                  ("dense", "conv1d", "lstm"), Progress(lines.append))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model_kinds"].keys() == {"dense", "conv1d", "lstm"}
    comparison = results["model_kinds"]
    # the config's own kind is the full evaluation's, not trained again
    assert comparison["dense"]["modes"]["federated"]["int8"]["f1"] == \
        results["modes"]["federated"]["kinds"]["int8"]["pooled"]["f1"]
    assert sum("federated round 1/1" in line for line in lines) == 3  # once per kind
    for kind, entry in comparison.items():
        assert entry["parameters"] == Architecture.from_settings(kind_settings(settings, kind)).n_params
        assert set(entry["modes"]) == {"federated", "centralised", "local"}
        for mode in entry["modes"].values():
            for precision in ("fp32", "int8"):
                p = mode[precision]
                assert 0 < p["f1"] <= 1 and 0 <= p["far"] <= 100 and 0.5 < p["roc_auc"] <= 1
            assert 0 < mode["seconds_per_round"] < 120, mode  # measured, not a placeholder
        assert entry["onnx_bytes"]["fp32"] > 0 and entry["onnx_bytes"]["int8"] > 0
        for precision in ("fp32", "int8"):
            assert entry["serving_us"][precision]["us_per_row_batch1"] > 0
        training = entry["training_process"]
        assert training["worker"] == "valve1" and training["inputs"] > 0
        assert 50 < training["peak_rss_mib"] < CONTAINER_LIMIT_MIB and training["cpu_seconds"] > 0
    table = format_kinds_table({"skab": comparison}).splitlines()
    rows = [line for line in table if line.startswith("| ")][1:]
    assert len(rows) == 9 and rows[0].startswith("| skab | dense | federated | auto (each node's own choice) |")
    assert any(line.startswith("| skab | lstm | federated | fp32 (int8 refused) |") for line in rows)


def test_windows_that_do_not_apply_leave_the_raw_window_kinds_one_row():
    """Shuttle's rows are independent (window 1): conv1d's kernel is cut to the window and both kinds say so."""
    from services.evaluation.kinds import kind_note, kind_settings

    shuttle = load_settings(REPO / "examples" / "shuttle.yaml")
    assert shuttle.data.window == 1
    conv = kind_settings(shuttle, "conv1d")
    assert conv.model.conv1d.kernel == 1 and Architecture.from_settings(conv).width == 9
    assert "one row" in kind_note(conv, "conv1d") and "one row" in kind_note(kind_settings(shuttle, "lstm"), "lstm")
    assert kind_note(settings_for("conv1d"), "conv1d") is None
    assert kind_settings(settings_for("dense", FEDAD__DATA__WINDOW="4"), "conv1d").model.conv1d.kernel == 3


def test_kinds_benchmark_prints_each_kind_beside_dense(tmp_path, capsys):
    """benchmarks/kinds.py with tiny sizes (it must not rot): dense is measured too, ratios are to it."""
    from benchmarks import kinds as bench

    out = tmp_path / "kinds.json"
    payload = bench.main(["--kinds", "lstm", "--worker", "valve2", "--rounds", "1", "--repeat", "1", "--number", "20",
                          "--batch", "64", "--json", str(out)])
    assert list(payload["kinds"]) == ["dense", "lstm"] and json.loads(out.read_text())["kinds"].keys() == {"dense",
                                                                                                          "lstm"}
    for figures in payload["kinds"].values():
        assert 50 < figures["train_peak_rss_mib"] < CONTAINER_LIMIT_MIB and figures["train_seconds_per_round"] > 0
        assert figures["batch1_us_per_row"] > 0 and figures["batch_us_per_row"] > 0
    assert payload["ratios_to_dense"]["dense"]["batch1_us_per_row"] == 1.0
    assert "| serving µs/row, batch 64 |" in capsys.readouterr().out
