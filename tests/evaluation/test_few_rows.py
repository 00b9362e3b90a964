"""The value of federation for a node with few rows, in a small real configuration: SKAB files, the aggregator's own
Federation class, the workers' own training and calibration. Checks what each model was trained and scored on, and
that both produce finite figures; not which one wins."""

import math

import numpy as np
import pytest

from services.config import load_settings
from services.data.sources import load_node
from services.evaluation import few_rows, runner
from services.protocol.codec import decode_weights

SMALL = {  # two rounds of one epoch on a few files per worker
    "FEDAD__FEDERATION__ROUNDS": "2",
    "FEDAD__MODEL__LOCAL_EPOCHS": "1",
    "FEDAD__WORKERS__VALVE1__PARTITION": "[valve1/0.csv, valve1/1.csv]",
    "FEDAD__WORKERS__VALVE2__PARTITION": "[valve2/0.csv, valve2/1.csv]",
    "FEDAD__WORKERS__OTHER__PARTITION": "[other/5.csv]",
}
N = 150


class SpyFederation(runner.Federation):
    """The real Federation, recording who joined with how many rows and the sample counts of every update."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.joined_counts: dict[str, int] = {}
        self.updates: dict[int, dict[str, int]] = {}
        SpyFederation.instances.append(self)

    def join(self, worker_id, request):
        self.joined_counts[worker_id] = request.sample_count
        return super().join(worker_id, request)

    def submit(self, worker_id, round_no, body, sample_count, loss, sha256):
        decode_weights(body, self.n_params, sha256)  # a real update on the wire
        self.updates.setdefault(round_no, {})[worker_id] = sample_count
        return super().submit(worker_id, round_no, body, sample_count, loss, sha256)


@pytest.fixture(scope="module")
def settings():
    return load_settings(environ=SMALL)


@pytest.fixture(scope="module")
def evaluated(settings, tmp_path_factory):
    trained_rows: list[int] = []
    real_train = runner._train

    def recording_train(s, inputs, start, seed, epochs=None):
        trained_rows.append(len(inputs))
        return real_train(s, inputs, start, seed, epochs)

    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "Federation", SpyFederation)
    mp.setattr(runner, "_train", recording_train)
    SpyFederation.instances.clear()
    lines: list[str] = []
    try:
        results = few_rows.run_few_rows(settings, (N,), ("valve2",), tmp_path_factory.mktemp("few-rows"),
                                        echo=lines.append, full=True)
    finally:
        mp.undo()
    return results, list(SpyFederation.instances), trained_rows, lines


def test_earliest_rows_fill_the_budget_run_after_run():
    masks = [np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 1], bool), np.array([1, 0, 0, 0], bool)]
    got = few_rows.earliest_rows(masks, 4)
    assert [m.tolist() for m in got] == [[True, True, False, False], [False, True, True, False],
                                         [False, False, False, False]]
    assert sum(int(m.sum()) for m in few_rows.earliest_rows(masks, 100)) == 6  # no more than the node has


def test_few_rows_node_trains_on_n_rows_and_holds_out_the_standard_rows(settings):
    standard = load_node(settings, settings.worker("valve2"))
    small = few_rows.FewRowsNode.of(standard, N)
    assert len(small.train_raw()) == small.rows == N
    np.testing.assert_array_equal(small.train_raw(), standard.runs[0].values[:N])  # the earliest rows
    scaler = None
    assert len(small.windows(scaler, "train")) == N
    np.testing.assert_array_equal(small.held_out_labels(), standard.held_out_labels())
    np.testing.assert_array_equal(small.windows(scaler, "held_out"), standard.windows(scaler, "held_out"))


def test_with_the_node_baseline_only_the_n_rows_scale_the_node():
    settings = load_settings(environ={**SMALL, "FEDAD__DATA__BASELINE": "node"})
    small = few_rows.FewRowsNode.of(load_node(settings, settings.worker("valve2")), N)
    reference = small.prep.reference(small.runs[0].values[:N], None)
    assert small.default_reference(None) == reference
    for run, inputs in zip(small.runs, small.run_inputs(None)):
        np.testing.assert_array_equal(inputs, small.prep.inputs(run.values, reference))


def test_the_small_node_joins_and_trains_with_n_rows_the_others_with_theirs(settings, evaluated):
    results, federations, _, _ = evaluated
    standard = {w.id: len(load_node(settings, w).train_raw()) for w in settings.workers}
    small_run, full_run = federations  # N = 150, then the node with all its rows
    assert small_run.joined_counts == {**standard, "valve2": N}
    assert sorted(small_run.updates) == [1, 2]
    assert all(counts == {**standard, "valve2": N} for counts in small_run.updates.values())
    assert full_run.joined_counts == standard
    assert results["standard_rows"] == standard


def test_the_local_only_model_saw_exactly_n_rows(settings, evaluated):
    results, _, trained_rows, _ = evaluated
    standard = {w.id: len(load_node(settings, w).train_raw()) for w in settings.workers}
    per_federated_run = settings.federation.rounds * len(settings.workers)
    # per entry: every worker every round (federated), then one local-only training of the small node
    small_local = trained_rows[per_federated_run]
    full_local = trained_rows[2 * per_federated_run + 1]
    assert small_local == N and full_local == standard["valve2"]
    small, full = results["entries"]
    assert (small["n"], small["rows"], small["local_rows_trained"]) == (N, N, N)
    assert (full["n"], full["rows"]) == ("all", standard["valve2"])
    assert small["held_out_rows"] == full["held_out_rows"] > 0  # scored on the same held-out rows


def test_both_models_give_finite_figures_and_the_table_lists_them(evaluated):
    results, _, _, lines = evaluated
    assert results["labelled"] and results["served"] == "served" and results["seeds"] == [0]
    for entry in results["entries"]:
        for model in few_rows.MODELS:
            for kind in ("fp32", "int8"):
                figures = entry["models"][model][kind]
                for key in few_rows.FIGURES:
                    mean = figures[key]["mean"]
                    assert math.isfinite(mean), (entry["n"], model, kind, key)
                    assert figures[key]["min"] <= mean <= figures[key]["max"]
                assert 0 <= figures["f1"]["mean"] <= 1 and 0 <= figures["far"]["mean"] <= 100
                assert 0 <= figures["roc_auc"]["mean"] <= 1 and figures["threshold"]["mean"] > 0
    table = few_rows.format_table(results)
    assert table.count("\n| valve2 |") == 2 and "| 150 |" in table and "all (" in table
    assert any("valve2 N=150" in line for line in lines)


def test_bad_arguments_are_refused_before_any_training():
    with pytest.raises(SystemExit, match="whole numbers"):
        few_rows.main(["--rows", "a lot"])
    with pytest.raises(SystemExit, match="at least one N"):
        few_rows.main(["--rows", "0"])
