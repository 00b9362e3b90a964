"""The served graph built without torch, with the preprocessing inside it, on real SKAB runs: the autoencoder graph
scores like torch's export, int8 of it decides like int8 of the export, and raw rows through the preprocessing
graph score like ``Preprocessing.inputs`` followed by the session (whole files; window 20 and 1, flattened)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from services.config import load_settings
from services.data.sources import load_node
from services.data.windows import Preprocessing
from services.model.detector import AnomalyDetector, DetectorSpec
from services.model.graph import autoencoder_graph
from services.model.preprocess_graph import (PREFIX, RAW_INPUT_NAME, preprocess_graph, reference_feeds,
                                             served_graph)
from services.model.quantize import quantize_int8
from services.model.scoring import SCORE_NAME, calibrate_threshold, make_session, session_scores
from services.protocol.messages import TrainingPlan

SETTINGS = load_settings(environ={})
PLAN = TrainingPlan.from_settings(SETTINGS)
N_FEATURES = len(SETTINGS.data.features)
PREP = Preprocessing.from_settings(SETTINGS.data)
PREPS = {  # the configured one, single rows, the flattened window, and the federation baseline with two statistics
    "window20": PREP,
    "window1": dataclasses.replace(PREP, window=1),
    "flattened": dataclasses.replace(PREP, stats=()),
    "federation": dataclasses.replace(PREP, window=7, stats=("slope", "mean"), baseline="federation"),
}


@pytest.fixture(scope="module")
def node():
    return load_node(SETTINGS, SETTINGS.worker("valve2"))


def references(node, prep):
    """Each run's reference: its own first rows (``run``), or one scaler of the node's training rows."""
    scaler = None
    if prep.baseline == "federation":
        from services.protocol.scaling import FeatureStats
        scaler = FeatureStats.from_rows(node.train_raw()).scaler()
    return [prep.reference(run.values[mask], scaler) for run, mask in zip(node.runs, node.masks)]


def trained(node, prep, refs, tmp_path: Path):
    """A real model for ``prep``: a few epochs on the node's training rows, its fp32 graph and int8 of it."""
    inputs = [prep.inputs(run.values, ref) for run, ref in zip(node.runs, refs)]
    train = np.concatenate([x[m] for x, m in zip(inputs, node.masks)])
    detector = AnomalyDetector(DetectorSpec(prep, tuple(SETTINGS.model.hidden), SETTINGS.threshold))
    detector.partial_fit(train, PLAN, seed=1, epochs=3)
    fp32 = autoencoder_graph(detector.get_weights(), prep.width, list(SETTINGS.model.hidden))
    take = np.linspace(0, len(train) - 1, min(2000, len(train)), dtype=int)
    int8 = quantize_int8(fp32, train[take], tmp_path)
    return detector, inputs, train, fp32, int8


def test_the_graph_modules_never_import_torch():
    code = ("import sys, services.model.graph, services.model.preprocess_graph, services.model.quantize; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_autoencoder_graph_scores_and_quantises_like_the_torch_export(node, tmp_path):
    from services.model.autoencoder import build_autoencoder, set_flat_weights
    from services.model.onnx_export import export_onnx

    refs = references(node, PREP)
    detector, inputs, train, fp32, int8 = trained(node, PREP, refs, tmp_path)
    model = build_autoencoder(PREP.width, list(SETTINGS.model.hidden))
    set_flat_weights(model, detector.get_weights())
    exported = export_onnx(model, PREP.width)
    ours, theirs = onnx.load_from_string(fp32).graph, onnx.load_from_string(exported).graph
    assert [(n.op_type, list(n.input), list(n.output)) for n in ours.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in theirs.node]
    held = np.concatenate([x[~m] for x, m in zip(inputs, node.masks)])
    a, b = session_scores(make_session(fp32), held), session_scores(make_session(exported), held)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)

    take = np.linspace(0, len(train) - 1, min(2000, len(train)), dtype=int)
    int8_export = quantize_int8(exported, train[take], tmp_path)
    decisions = []
    for onnx_bytes in (int8, int8_export):
        session = make_session(onnx_bytes)
        threshold = calibrate_threshold(session_scores(session, train), SETTINGS.threshold)
        decisions.append(session_scores(session, held) > threshold)
    assert decisions[0].any() and not decisions[0].all(), "the held-out rows hold both verdicts"
    np.testing.assert_array_equal(decisions[0], decisions[1])


@pytest.mark.parametrize("name", list(PREPS))
def test_raw_rows_through_the_served_graph_score_like_preprocessing_then_session(node, tmp_path, name):
    prep = PREPS[name]
    refs = references(node, prep)
    _, inputs, train, fp32, int8 = trained(node, prep, refs, tmp_path)
    for served_name, onnx_bytes in (("fp32", fp32), ("int8", int8)):
        session = make_session(onnx_bytes)
        threshold = calibrate_threshold(session_scores(session, train), SETTINGS.threshold)
        fed = make_session(served_graph(onnx_bytes, prep, None, N_FEATURES))  # one session, every run's reference
        agree = total = flagged = 0
        for run, ref, x in zip(node.runs, refs, inputs):  # whole files, every row, one call each
            baked = make_session(served_graph(onnx_bytes, prep, ref, N_FEATURES))
            rows = run.values.astype(np.float32)
            expected = session_scores(session, x)
            for got in (baked.run([SCORE_NAME], {RAW_INPUT_NAME: rows})[0],
                        fed.run([SCORE_NAME], {RAW_INPUT_NAME: rows, **reference_feeds(prep, ref)})[0]):
                assert got.shape == (len(run.values),)
                close = np.isclose(got, expected, rtol=1e-5, atol=0)
                if served_name == "fp32":
                    assert close.all(), f"{name} {run.name}: {np.max(np.abs(got / expected - 1)):.2e} relative"
                else:  # int8: an input a float32 rounding away may land in the next quantisation step
                    assert close.mean() >= 0.999, f"{name} {run.name}: {np.sum(~close)} int8 scores moved"
                agree += int(np.sum((got > threshold) == (expected > threshold)))
                flagged += int(np.sum(expected > threshold))
                total += len(got)
        assert 0 < flagged < total, "the runs hold both verdicts"
        assert agree / total >= 0.999, f"{name} {served_name}: {total - agree} of {total} decisions differ"


def test_preprocessing_graph_equals_the_exact_windows_on_short_batches_and_spikes():
    """Batches shorter than the window, one row, and a spike of 10⁴ σ before quiet windows (whose std the block-wise
    sums keep), against the exact sliding windows."""
    class Data:
        columns, model_columns, window, window_stats, baseline, scaling = (
            ["a", "b", "c", "d"], ["d", "a", "c"], 5, ["mean", "std", "slope"], "run", "standard")

    prep = Preprocessing.from_settings(Data)
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((300, 4)) * [1, 10, 100, 0.1] + [0, 5, 50, 1]).astype(np.float32)
    reference = prep.reference(rows[:50], None)
    rows[150, 3] = 1e3  # 10⁴ of that channel's std
    rows[200:, 2] = 7.0  # a constant stretch: std exactly 0 there
    session = ort.InferenceSession(preprocess_graph(prep, reference, 4), providers=["CPUExecutionProvider"])
    for n in (1, 2, 4, 5, 6, 300):
        got = session.run(None, {RAW_INPUT_NAME: rows[:n]})[0]
        np.testing.assert_allclose(got, prep.inputs(rows[:n], reference), rtol=1e-5, atol=1e-4, err_msg=f"n={n}")


def test_int8_quantises_only_the_autoencoder_and_bad_shapes_are_refused(node, tmp_path):
    refs = references(node, PREP)
    _, _, _, _, int8 = trained(node, PREP, refs, tmp_path)
    served = onnx.load_from_string(served_graph(int8, PREP, refs[0], N_FEATURES))
    prep_ops = {n.op_type for n in served.graph.node if n.name.startswith(PREFIX)}
    assert not prep_ops & {"QuantizeLinear", "DequantizeLinear"}, "the preprocessing stays float"
    assert any(n.op_type == "QuantizeLinear" for n in served.graph.node)
    assert [i.name for i in served.graph.input] == [RAW_INPUT_NAME]
    with pytest.raises(ValueError, match="the autoencoder takes 18 inputs, the preprocessing makes 120"):
        served_graph(int8, PREPS["flattened"], refs[0], N_FEATURES)
    with pytest.raises(ValueError, match="do not all lie within 4 features"):
        served_graph(int8, PREP, refs[0], 4)
    with pytest.raises(ValueError, match="the reference scales 8 channels, the model sees 6"):
        reference_feeds(PREP, PREP.reference(node.runs[0].values[:400], None).model_copy(
            update={"mean": [0.0] * 8, "std": [1.0] * 8}))
    with pytest.raises(ValueError, match="window statistics"):
        reference_feeds(PREP, refs[0].model_copy(update={"feature_mean": [], "feature_std": []}))
    session = make_session(served_graph(int8, PREP, refs[0], N_FEATURES))
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # onnxruntime names the wrong width
        session.run([SCORE_NAME], {RAW_INPUT_NAME: np.zeros((3, N_FEATURES - 1), np.float32)})
    fed = make_session(served_graph(int8, PREP, None, N_FEATURES))
    assert {i.name for i in fed.get_inputs()} == {RAW_INPUT_NAME, *reference_feeds(PREP, refs[0])}
    with pytest.raises(Exception, match="reference_mean"):  # a fed graph names the reference it misses
        fed.run([SCORE_NAME], {RAW_INPUT_NAME: node.runs[0].values[:5].astype(np.float32)})
