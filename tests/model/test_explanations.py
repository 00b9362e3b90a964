"""Each score's sensors: a row's reconstruction error split over the sensors the model reads. On SKAB's valve1 files
(the outflow valve closed) the share goes to the channel the fault moves, which we measure from the data itself."""

import numpy as np
import pytest

from services.config import load_settings
from services.data.sources import load_node
from services.model.detector import AnomalyDetector, DetectorSpec
from services.protocol.messages import TrainingPlan
from services.worker.explain import Explainer

SETTINGS = load_settings(environ={})
SENSORS = SETTINGS.data.model_columns


@pytest.fixture(scope="module")
def node():
    return load_node(SETTINGS, SETTINGS.worker("valve1"))


@pytest.fixture(scope="module")
def detector(node, tmp_path_factory):
    train = node.windows(None, "train")
    detector = AnomalyDetector(DetectorSpec.from_settings(SETTINGS))
    detector.partial_fit(train, TrainingPlan.from_settings(SETTINGS), seed=1, epochs=5)
    return detector.calibrate(train, node.default_reference(None), workdir=tmp_path_factory.mktemp("q"))


def shifted(run, mask, fault, columns):
    """How far each channel's mean over the fault moves from the run's normal start, in that start's std."""
    start = run.values[mask][:, columns]
    return np.abs(run.values[~mask][fault][:, columns].mean(axis=0) - start.mean(axis=0)) / start.std(axis=0)


def test_shares_sum_to_one_and_name_the_channel_the_fault_moves(detector, node):
    columns = list(detector.spec.prep.columns)
    on_flow = 0
    for run, mask in zip(node.runs, node.masks):
        rows, fault = run.values[~mask], run.labels[~mask] == 1
        shares = detector.contributions(detector.inputs(rows, run.values[mask]))
        assert shares.shape == (len(rows), len(SENSORS))
        np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-6)
        assert (shares >= 0).all()
        top = int(shares[fault].mean(axis=0).argmax())
        moved = np.argsort(-shifted(run, mask, fault, columns))[:2]
        assert top in moved, f"{run.name}: {SENSORS[top]} takes most of the error, but the fault moves " \
                             f"{[SENSORS[i] for i in moved]}"
        on_flow += SENSORS[top] == "Volume Flow RateRMS"
    assert on_flow >= 0.75 * len(node.runs), f"the closed valve shows in the flow in only {on_flow} files"


def test_the_error_output_is_what_the_score_averages(detector, node):
    run, mask = node.runs[3], node.masks[3]
    inputs = detector.inputs(run.values[~mask], run.values[mask])
    errors = detector.session_.run(["error"], {"x": inputs})[0]
    np.testing.assert_allclose(errors.mean(axis=1), detector.score_inputs(inputs), rtol=1e-5)


def test_the_explainer_names_the_top_three_of_the_rows_asked_for(detector, node):
    run, mask = node.runs[5], node.masks[5]
    rows = run.values[~mask]
    scores = detector.decision_function(rows, run.values[mask])
    flags = detector.is_anomaly(scores)
    assert flags.any() and not flags.all()
    top = Explainer(SENSORS).rows(detector, rows, run.values[mask], flags)
    assert [t is not None for t in top] == flags.tolist()
    for entry in (t for t in top if t):
        assert len(entry) == 3 and {e["sensor"] for e in entry} <= set(SENSORS)
        assert entry[0]["share"] >= entry[1]["share"] >= entry[2]["share"] > 0
