"""The detector's two scoring paths on whole SKAB files: one row through the numpy pipeline and the model session,
more rows through the in-graph session (``GRAPH_MIN_ROWS``). Across that crossover a row's score is the same within
float32 rounding (fp32), and the same verdict but for a rare quantisation step (int8); a detector calibrated without
torch serves from a process that never imports it."""

import subprocess
import sys

import numpy as np
import pytest

from services.config import load_settings
from services.data.sources import load_node
from services.model.detector import GRAPH_MIN_ROWS, AnomalyDetector, DetectorSpec
from services.protocol.messages import TrainingPlan

SETTINGS = load_settings(environ={})
SPEC = DetectorSpec.from_settings(SETTINGS)


@pytest.fixture(scope="module")
def node():
    return load_node(SETTINGS, SETTINGS.worker("valve2"))


@pytest.fixture(scope="module")
def detectors(node, tmp_path_factory):
    """A real model: a few epochs on the node's training inputs, calibrated int8, and the same weights as fp32."""
    train = node.windows(None, "train")
    detector = AnomalyDetector(SPEC)
    detector.partial_fit(train, TrainingPlan.from_settings(SETTINGS), seed=1, epochs=5)
    int8 = detector.calibrate(train, node.default_reference(None), workdir=tmp_path_factory.mktemp("q"))
    return {"int8": int8, "fp32": int8.served_as("fp32", train)}


def pipeline_scores(detector, rows, reference_rows=None):
    """The numpy path on every row count: preprocessing in numpy, then the autoencoder session."""
    return detector.score_inputs(detector.inputs(rows, reference_rows))


@pytest.mark.parametrize("served", ["fp32", "int8"])
def test_both_paths_score_a_whole_file_alike_across_the_crossover(detectors, node, served):
    detector = detectors[served]
    agree = total = flagged = 0
    for run in node.runs:
        rows = run.values.astype(np.float32)
        expected = pipeline_scores(detector, rows)
        got = detector.decision_function(rows)  # the whole file: the in-graph session
        prefixes = {n: detector.decision_function(rows[:n]) for n in (1, GRAPH_MIN_ROWS - 1, GRAPH_MIN_ROWS, 64)}
        close = np.isclose(got, expected, rtol=1e-5, atol=0)
        if served == "fp32":
            assert close.all(), f"{run.name}: {np.max(np.abs(got / expected - 1)):.2e} relative"
        else:  # an input a float32 rounding away may land in the next quantisation step
            assert close.mean() >= 0.999, f"{run.name}: {np.sum(~close)} int8 scores moved"
        for n, scores in prefixes.items():  # a window never reaches past its row: a prefix scores like the file
            assert scores.shape == (n,)
            np.testing.assert_allclose(scores, expected[:n], rtol=1e-5 if served == "fp32" else 2e-2,
                                       err_msg=f"{run.name}, first {n} rows")
        agree += int(np.sum(detector.is_anomaly(got) == detector.is_anomaly(expected)))
        flagged += int(np.sum(detector.is_anomaly(expected)))
        total += len(rows)
    assert 0 < flagged < total, "the files hold both verdicts"
    assert agree / total >= 0.999, f"{total - agree} of {total} verdicts differ between the paths"


def test_a_run_baseline_scores_alike_on_both_paths(detectors, node):
    detector = detectors["fp32"]
    rows = node.runs[1].values.astype(np.float32)
    baseline, samples = rows[:400], rows[400:]
    expected = pipeline_scores(detector, samples, baseline)
    for n in (1, 5, len(samples)):
        np.testing.assert_allclose(detector.decision_function(samples[:n], baseline), expected[:n], rtol=1e-5)


def test_calibrating_and_serving_a_dense_detector_never_imports_torch(detectors, node, tmp_path):
    weights = tmp_path / "w.npy"
    np.save(weights, detectors["int8"].get_weights())
    code = f"""
import sys
import numpy as np
from services.config import load_settings
from services.data.sources import load_node
from services.model.detector import AnomalyDetector, DetectorSpec
s = load_settings(environ={{}})
node = load_node(s, s.worker("valve2"))
d = AnomalyDetector(DetectorSpec.from_settings(s), np.load({str(weights)!r}))
d.calibrate(node.windows(None, "train"), node.default_reference(None))
print(d.threshold_, float(d.decision_function(node.runs[0].values[:300]).mean()))
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")], "torch imported"
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    threshold, _ = map(float, out.stdout.split())
    assert threshold == pytest.approx(detectors["int8"].threshold_, rel=1e-6), "same weights, same calibration"
