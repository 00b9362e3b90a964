"""Train and score federated, centralised and local-only detectors on the same partitions, fp32 and int8 side by side.

Every path uses the code the services run:
- **federated**: the aggregator's ``Federation`` state machine (join with scaling statistics, rounds that close when
  ``min_workers`` updates arrived, the configured strategy and update filters, persistence in a temporary state
  dir) driven in-process; each worker's update comes from ``AnomalyDetector.partial_fit`` with the worker's own
  seed and the aggregator's training plan, through the wire codec, as ``WorkerLoop._train``/``_push`` produce it
  (client-side privacy filters too).
- **centralised**: all workers' training inputs pooled in one place, one model trained for the same number of
  epochs (rounds × local epochs): the reference that federated learning should match.
- **local-only**: each worker trains alone for the same number of epochs, no federation.
Then for every trained model and every worker, as ``WorkerLoop._install`` does: ``AnomalyDetector.calibrate``
(fp32 ONNX export, static int8 quantisation and the threshold on the served model's own scores of the worker's
training inputs), scores of the held-out rows. The data's training selection says which rows train (SKAB: the first
``data.training.rows`` of each run; Shuttle: a share of the normal rows), the rest is scored; F1 / FAR / MAR pooled
over all runs. A reference detector from scikit-learn (services/evaluation/reference.py) is scored on the same inputs.
Unlabelled data get no F1 but each detector's alarm rate on held-out rows and the spread of its scores around its
alarm limit.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.aggregator.rounds import Federation
from services.aggregator.store import AggregatorStore
from services.config import Settings
from services.data.node import NodeData
from services.protocol.scaling import FeatureStats, Scaler
from services.data.sources import load_node
from services.evaluation.changepoints import skab_board
from services.evaluation.reference import NAME as REFERENCE_NAME
from services.evaluation.reference import score_reference, unlabelled_metrics
from services.model.autoencoder import build_autoencoder, set_flat_weights
from services.model.detector import AnomalyDetector, DetectorSpec, node_seed
from services.model.metrics import detection_metrics, threshold_ratio
from services.model.precision import choose as choose_precision
from services.evaluation.verdict import verdict
from services.machine import describe_cpu
from services.model.scoring import session_scores
from services.protocol.codec import content_hash, encode_weights
from services.protocol.messages import JoinRequest, TrainingPlan

MODES = ("federated", "centralised", "local")
KINDS = ("fp32", "int8")
LATENT_POINTS = 1500
TIMING_CALLS = 2000


class Progress:
    """One line per step with the elapsed time: the evaluation's progress display."""

    def __init__(self, echo=print):
        self.echo = echo
        self.started = time.time()

    def __call__(self, message: str) -> None:
        if self.echo:
            self.echo(f"[{time.time() - self.started:5.0f}s] {message}")


@dataclass
class Trained:
    """What one training mode produced: global or per-worker weights, the scaler each worker uses, losses."""

    weights: dict[str, np.ndarray]  # per worker (the same array for every worker unless local-only)
    scalers: dict[str, Scaler | None]
    losses: dict[str, list[float]]  # per worker (or "all"), one value per round
    seconds: float = 0.0
    history: list = field(default_factory=list)


def load_nodes(settings: Settings) -> dict[str, NodeData]:
    return {w.id: load_node(settings, w) for w in settings.workers}


def _train(settings: Settings, inputs: np.ndarray, start: np.ndarray, seed: int, epochs: int | None = None):
    """Weights after local training from ``start``, and the TrainResult."""
    detector = AnomalyDetector(DetectorSpec.from_settings(settings), start)
    result = detector.partial_fit(inputs, TrainingPlan.from_settings(settings), seed, epochs)
    return detector.get_weights(), result


def _simulation_settings(settings: Settings, n_workers: int) -> Settings:
    """Every worker reports every round, so rounds close on min_workers, never on a deadline."""
    sim = settings.model_copy(deep=True)
    sim.federation.min_workers = n_workers
    sim.federation.quorum = min(sim.federation.quorum, n_workers)
    return sim


def train_federated(settings: Settings, nodes: dict[str, NodeData], progress: Progress) -> Trained:
    from services.security.filters import FilterContext, apply, client_privacy_filters

    started = time.time()
    settings = _simulation_settings(settings, len(nodes))
    outbound = client_privacy_filters(settings.privacy)
    with tempfile.TemporaryDirectory(prefix="fedad-eval-") as tmp:
        fed = Federation(settings, AggregatorStore(Path(tmp) / "aggregator"))
        for worker_id, node in nodes.items():
            raw = node.train_raw()
            fed.join(worker_id, JoinRequest(spec_hash=fed.spec_hash, sample_count=len(raw),
                                            stats=FeatureStats.from_rows(raw)))
        if fed.phase != "training":
            raise RuntimeError(f"the federation did not start training after all workers joined ({fed.phase})")
        scaler = fed.scaler
        inputs = {w: node.windows(scaler, "train") for w, node in nodes.items()}
        while fed.phase == "training":
            round_no, start = fed.open_round, fed.global_weights.copy()
            for worker_id, node in nodes.items():
                weights, result = _train(settings, inputs[worker_id], start,
                                         node_seed(settings.model.seed, worker_id) + round_no)
                if outbound:
                    weights = apply(outbound, weights, FilterContext(reference=start))
                body = encode_weights(weights)
                fed.submit(worker_id, round_no, body, len(node.train_raw()), result.loss, content_hash(body))
            record = fed.state.history[-1]
            progress(f"federated round {record['round']}/{settings.federation.rounds}: "
                     + ", ".join(f"{w} {v['loss']:.4f}" for w, v in record["workers"].items()))
        history = fed.state.history
        weights = fed.global_weights.copy()
    losses = {w: [h["workers"][w]["loss"] for h in history] for w in nodes}
    return Trained({w: weights for w in nodes}, {w: scaler for w in nodes}, losses, time.time() - started, history)


def _initial_weights(settings: Settings) -> np.ndarray:
    return AnomalyDetector(DetectorSpec.from_settings(settings)).get_weights()


def _per_round(epoch_losses: list[float], epochs_per_round: int) -> list[float]:
    return [float(np.mean(epoch_losses[i:i + epochs_per_round]))
            for i in range(0, len(epoch_losses), epochs_per_round)]


def train_centralised(settings: Settings, nodes: dict[str, NodeData], progress: Progress) -> Trained:
    """All training inputs in one place; the scaler (federation baseline) is the pooled one, as the federation's is."""
    started = time.time()
    scaler = FeatureStats.from_rows(np.concatenate([n.train_raw() for n in nodes.values()])).scaler()
    pooled = np.concatenate([node.windows(scaler, "train") for node in nodes.values()])
    epochs = settings.federation.rounds * settings.model.local_epochs
    weights, result = _train(settings, pooled, _initial_weights(settings), settings.model.seed, epochs=epochs)
    progress(f"centralised: {epochs} epochs on {len(pooled)} pooled inputs, loss {result.loss:.4f}")
    losses = {"all": _per_round(result.epoch_losses, settings.model.local_epochs)}
    return Trained({w: weights for w in nodes}, {w: scaler for w in nodes}, losses, time.time() - started)


def train_local_only(settings: Settings, nodes: dict[str, NodeData], progress: Progress) -> Trained:
    started = time.time()
    weights, scalers, losses = {}, {}, {}
    epochs = settings.federation.rounds * settings.model.local_epochs
    for worker_id, node in nodes.items():
        scalers[worker_id] = FeatureStats.from_rows(node.train_raw()).scaler()
        weights[worker_id], result = _train(settings, node.windows(scalers[worker_id], "train"),
                                            _initial_weights(settings), node_seed(settings.model.seed, worker_id),
                                            epochs=epochs)
        losses[worker_id] = _per_round(result.epoch_losses, settings.model.local_epochs)
        progress(f"local-only {worker_id}: {epochs} epochs, loss {result.loss:.4f}")
    return Trained(weights, scalers, losses, time.time() - started)


def score_trained(settings: Settings, nodes: dict[str, NodeData], trained: Trained, workdir: Path) -> dict:
    """Per worker and kind: the served-model path (export, quantise, calibrate, evaluate) plus per-run scores."""
    out = {}
    for worker_id, node in nodes.items():
        scaler = trained.scalers[worker_id]
        train_inputs = node.windows(scaler, "train")
        workdir.mkdir(parents=True, exist_ok=True)
        calibrated = AnomalyDetector(DetectorSpec.from_settings(settings), trained.weights[worker_id]).calibrate(
            train_inputs, node.default_reference(scaler), workdir=workdir)
        per_kind = {}
        for kind in KINDS:
            detector = calibrated.served_as(kind, train_inputs)
            metrics, held_scores = detector.evaluate(node.windows(scaler, "held_out"), node.held_out_labels())
            runs = [detector.score_inputs(x) for x in node.run_inputs(scaler)]
            per_kind[kind] = {"threshold": detector.threshold_, "metrics": metrics, "held_scores": held_scores,
                              "run_scores": runs, "bytes": len(detector.served_onnx), "onnx": detector.served_onnx,
                              "train_scores": np.concatenate([r[m] for r, m in zip(runs, node.masks)]),
                              "flags": detector.is_anomaly(held_scores)}
        choice = choose_precision(settings.serving.model, settings.model.kind,
                                  {k: per_kind[k]["held_scores"] for k in KINDS},
                                  {k: per_kind[k]["threshold"] for k in KINDS}, node.held_out_labels())
        per_kind["served"] = {**per_kind[choice.served], "precision": choice.as_dict()}  # what the node serves
        out[worker_id] = per_kind
    return out


def pooled(nodes: dict[str, NodeData], scored: dict, kind: str) -> dict:
    """SKAB pools the predictions of all files; scores are divided by each worker's threshold so that one ROC curve
    over all workers ranks rows by how far past their own alarm limit they are. Unlabelled: alarm rate and spread."""
    ratio = np.concatenate([threshold_ratio(scored[w][kind]["held_scores"], scored[w][kind]["threshold"])
                            for w in nodes])
    if not all(n.labelled for n in nodes.values()):
        return unlabelled_metrics(ratio, 1.0)
    labels = np.concatenate([nodes[w].held_out_labels() for w in nodes])
    return {"labels": True, **detection_metrics(labels, ratio > 1.0, ratio)}


def timing(onnx_bytes: bytes, rows: np.ndarray) -> dict:
    """Median µs per call for one row, and µs per row in batches of 256, one thread (as /detect runs)."""
    from services.model.scoring import make_session

    session = make_session(onnx_bytes)
    one = rows[:1]
    for _ in range(50):
        session_scores(session, one)
    samples = []
    for _ in range(TIMING_CALLS):
        t = time.perf_counter()
        session_scores(session, one)
        samples.append(time.perf_counter() - t)
    batch = np.ascontiguousarray(np.resize(rows, (256, rows.shape[1])))
    t = time.perf_counter()
    for _ in range(50):
        session_scores(session, batch)
    per_row_batch = (time.perf_counter() - t) / (50 * 256)
    return {"us_per_row_batch1": round(float(np.median(samples)) * 1e6, 2),
            "us_per_row_batch256": round(per_row_batch * 1e6, 3)}


def latent_view(settings: Settings, weights: np.ndarray, nodes: dict[str, NodeData], scaler, seed: int = 0) -> dict:
    """The bottleneck activations of held-out and training inputs, embedded in 2-D by t-SNE (PCA if t-SNE fails)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    model = build_autoencoder(settings.input_width, settings.model.hidden)
    set_flat_weights(model, weights)
    bottleneck = int(np.argmin(settings.model.hidden))
    encoder = model[: 2 * (bottleneck + 1)]  # Linear+ReLU pairs up to the narrowest layer
    xs, labels, parts = [], [], []
    for node in nodes.values():
        for run, x, mask in zip(node.runs, node.run_inputs(scaler), node.masks):
            xs.append(x)
            labels.append(run.labels if run.labelled else np.full(len(x), -1, np.int8))  # -1: unknown
            parts.append(~mask)
    x, y, held = np.concatenate(xs), np.concatenate(labels), np.concatenate(parts)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(x), size=min(LATENT_POINTS, len(x)), replace=False))
    with torch.no_grad():
        z = encoder(torch.from_numpy(x[take])).numpy()
    method = "t-SNE"
    try:
        xy = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed).fit_transform(z) if z.shape[1] > 2 \
            else z
    except Exception:  # pragma: no cover - t-SNE is optional sugar
        xy, method = PCA(n_components=2).fit_transform(z), "PCA"
    if z.shape[1] <= 2:
        method = "bottleneck (2-D)"
    return {"xy": xy.astype(np.float32), "label": y[take].astype(np.int8), "held_out": held[take], "method": method,
            "bottleneck": int(settings.model.hidden[bottleneck])}


def run_evaluation(settings: Settings, out_dir: Path, modes: tuple[str, ...] = MODES, echo=print,
                   latent: bool = True, progress: Progress | None = None) -> dict:
    """Train and score every mode; write ``results.json`` and ``arrays.npz`` to ``out_dir``; return the results."""
    torch.set_num_threads(1)
    progress = progress or Progress(echo)
    began = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nodes = load_nodes(settings)
    labelled = all(n.labelled for n in nodes.values())
    if not labelled:
        progress("no labels (in " + ", ".join(w for w, n in nodes.items() if not n.labelled) + "): no F1; alarm "
                 "rates on held-out rows and score spreads instead")
    progress(f"data: {sum(len(n.runs) for n in nodes.values())} runs in {len(nodes)} workers "
             f"({', '.join(f'{w}: {len(n.runs)}' for w, n in nodes.items())}); input width "
             f"{settings.input_width}, model {settings.model_shape}")
    trainers = {"federated": train_federated, "centralised": train_centralised, "local": train_local_only}
    results: dict = {"settings": _settings_summary(settings), "modes": {}, "workers": list(nodes),
                     "labelled": labelled, "data": describe_data(settings), "cpu": describe_cpu()}
    arrays: dict[str, np.ndarray] = {}
    for e_worker, node in nodes.items():
        for i, (run, mask) in enumerate(zip(node.runs, node.masks)):
            arrays[f"train_mask/{e_worker}/{i}"] = mask
            if run.labelled:
                arrays[f"labels/{e_worker}/{i}"] = run.labels
    results["experiments"] = {w: [run.name for run in n.runs] for w, n in nodes.items()}
    with tempfile.TemporaryDirectory(prefix="fedad-eval-onnx-") as tmp:
        for mode in modes:
            trained = trainers[mode](settings, nodes, progress)
            scored = score_trained(settings, nodes, trained, Path(tmp) / mode)
            entry = {"train_seconds": round(trained.seconds, 2), "losses": trained.losses, "kinds": {}}
            for kind in KINDS:
                per_worker = {w: {**scored[w][kind]["metrics"], "threshold": scored[w][kind]["threshold"]}
                              for w in nodes}
                entry["kinds"][kind] = {"pooled": pooled(nodes, scored, kind), "workers": per_worker}
                for w in nodes:
                    for i, s in enumerate(scored[w][kind]["run_scores"]):
                        arrays[f"scores/{mode}/{kind}/{w}/{i}"] = s.astype(np.float32)
                    arrays[f"threshold/{mode}/{kind}/{w}"] = np.array([scored[w][kind]["threshold"]])
            entry["served"] = {"pooled": pooled(nodes, scored, "served"),  # each node's own precision
                               "workers": {w: {**scored[w]["served"]["metrics"],
                                               "threshold": scored[w]["served"]["threshold"],
                                               "precision": scored[w]["served"]["precision"]} for w in nodes}}
            fp, q = entry["kinds"]["fp32"]["pooled"], entry["kinds"]["int8"]["pooled"]
            first = next(iter(nodes))
            entry["int8_vs_fp32"] = {
                "roc_auc_difference": round(q["roc_auc"] - fp["roc_auc"], 4) if "roc_auc" in q else None,
                "decision_agreement": round(float(np.mean(np.concatenate(
                    [scored[w]["int8"]["flags"] == scored[w]["fp32"]["flags"] for w in nodes]))), 4),
                "bytes": {k: scored[first][k]["bytes"] for k in KINDS},
            }
            if mode == "federated" and settings.data.source.download == "skab":
                results["changepoints"] = skab_board(settings, nodes, scored)
            if mode == "federated":
                entry["history"] = trained.history
                rows = nodes[first].windows(trained.scalers[first], "held_out")
                entry["timing"] = {k: timing(scored[first][k]["onnx"], rows) for k in KINDS}
                if latent and settings.model.kind == "dense":  # the bottleneck view reads dense layers
                    view = latent_view(settings, trained.weights[first], nodes, trained.scalers[first])
                    arrays.update({f"latent/{k}": v for k, v in view.items() if isinstance(v, np.ndarray)})
                    entry["latent"] = {"method": view["method"], "bottleneck": view["bottleneck"]}
            results["modes"][mode] = entry
            progress(f"{mode}: " + "; ".join(f"{k} {summary(entry['kinds'][k]['pooled'])}" for k in KINDS))
    started = time.time()
    reference = score_reference(settings, nodes)
    results["reference"] = {"name": REFERENCE_NAME, "train_seconds": round(time.time() - started, 1),
                            "pooled": pooled(nodes, {w: {"ref": r} for w, r in reference.items()}, "ref"),
                            "workers": {w: {**r["metrics"], "threshold": r["threshold"]} for w, r in reference.items()}}
    for w, r in reference.items():
        for i, s in enumerate(r["run_scores"]):
            arrays[f"scores/reference/{w}/{i}"] = s.astype(np.float32)
        arrays[f"threshold/reference/{w}"] = np.array([r["threshold"]])
    progress(f"reference {REFERENCE_NAME} (per node, same inputs): {summary(results['reference']['pooled'])}")
    results["checks"] = acceptance(results, skab=settings.data.source.download == "skab")
    results["verdict"] = served_verdict(results, settings)
    results["seconds"] = round(time.time() - began, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=json_default))
    np.savez_compressed(out_dir / "arrays.npz", **arrays)
    progress(f"results in {out_dir}/results.json")
    return results


def served_verdict(results: dict, settings: Settings) -> dict | None:
    """The verdict (services/evaluation/verdict.py) on what a node would serve: the federated model at each node's
    own precision (the first mode evaluated when federated is not)."""
    if not results["modes"] or "reference" not in results:
        return None
    mode = "federated" if "federated" in results["modes"] else next(iter(results["modes"]))
    served = results["modes"][mode]["served"]
    chosen = [w["precision"]["served"] for w in served["workers"].values()]
    precision = chosen[0] if len(set(chosen)) == 1 else f"int8 on {chosen.count('int8')} of {len(chosen)} nodes"
    what = f"the served detector ({mode}, {precision}, {settings.model_shape.split(' (')[0]})"
    return verdict(served["pooled"], results["reference"]["pooled"], settings, what)


def summary(p: dict) -> str:
    """One pooled figure line: F1 and friends, or without labels the alarm rate and score spread."""
    if p.get("labels", True):
        return (f"F1 {p['f1']:.3f} FAR {p['far']:.2f}% MAR {p['mar']:.2f}% "
                f"ROC-AUC {p.get('roc_auc', float('nan')):.4f}")
    return (f"alarms {p['alarm_rate']:.2f}% of held-out rows; score / threshold p50 {p.get('ratio_p50', 0):.3f} "
            f"p99 {p.get('ratio_p99', 0):.3f}")


def acceptance(results: dict, skab: bool = True) -> dict:
    """Targets: on SKAB, federated F1 ≥ 0.80 with FAR ≤ 15 %; on any labelled data, federated within 0.01 F1 of
    centralised and int8 within 0.005 ROC-AUC of fp32 (every mode evaluated); unlabelled, int8 and fp32 agree on
    99 % of decisions."""
    modes = results["modes"]
    checks = {}
    if not results.get("labelled", True):
        for mode, entry in modes.items():
            agree = entry["int8_vs_fp32"]["decision_agreement"]
            checks[f"{mode}: int8 and fp32 agree on >= 99 % of decisions"] = {"value": f"{100 * agree:.2f} %",
                                                                             "ok": agree >= 0.99}
        return checks
    if "federated" in modes and skab:
        fed = modes["federated"]["kinds"]
        for kind in KINDS:
            p = fed[kind]["pooled"]
            checks[f"federated {kind}: F1 >= 0.80 and FAR <= 15 %"] = {
                "value": f"F1 {p['f1']:.3f}, FAR {p['far']:.2f} %", "ok": p["f1"] >= 0.80 and p["far"] <= 15}
    if "federated" in modes and "centralised" in modes:
        fed = modes["federated"]["kinds"]
        for kind in KINDS:
            gap = modes["centralised"]["kinds"][kind]["pooled"]["f1"] - fed[kind]["pooled"]["f1"]
            checks[f"{kind}: federated within 0.01 F1 of centralised"] = {
                "value": f"centralised − federated = {gap:+.4f}", "ok": gap <= 0.01}
    for mode, entry in modes.items():
        diff = entry["int8_vs_fp32"]["roc_auc_difference"]
        checks[f"{mode}: int8 within 0.005 ROC-AUC of fp32"] = {"value": f"{diff:+.4f}", "ok": abs(diff) <= 0.005}
    return checks


def describe_data(settings: Settings) -> str:
    """What is evaluated, in one phrase: the source and which rows train."""
    data = settings.data
    source = data.source
    what = ("a synthetic fleet" if source.kind == "synthetic" else "SKAB" if source.download == "skab"
            else f"the files in {source.dir.name}/" if source.dir else "files")
    t = data.training
    rows = {"first_rows": f"the first {t.rows} rows of each run train", "all": "every row trains",
            "before": f"rows before {t.before} train",
            "labelled_normal": f"{100 * t.share:g} % of the rows labelled normal train"}[t.policy]
    split = f", one file split {data.split.method} across the workers" if data.split else ""
    window = f"window {data.window} {'stats ' + '/'.join(data.window_stats) if data.window_stats else 'flattened'}"
    return f"{what} ({rows}{split}; {window}, baseline {data.baseline})"


def _settings_summary(settings: Settings) -> dict:
    return {
        "data": _without_dir(settings.data.model_dump(mode="json")),
        "model": settings.model.model_dump(mode="json"),
        "federation": settings.federation.model_dump(mode="json"),
        "threshold": settings.threshold.model_dump(mode="json"),
        "serving": settings.serving.model,
        "shape": settings.model_shape,
        "input_width": settings.input_width,
        "workers": {w.id: w.partition for w in settings.workers},
    }


def _without_dir(data: dict) -> dict:
    """The data settings without the folder they were read from (a local path says nothing about the figures)."""
    return {**data, "source": {k: v for k, v in data["source"].items() if k != "dir"}}


def json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
