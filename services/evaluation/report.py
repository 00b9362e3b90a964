"""One self-contained HTML page (PNG figures embedded as data URIs) from ``fedad evaluate``'s results folder.

Figures (``FIGURES``): comparison table (with the same-run IsolationForest, and SKAB's leaderboard on SKAB);
reconstruction-error distributions with the threshold; anomaly score over time per run with the training rows and
the true anomaly spans shaded; ROC and precision-recall curves; confusion matrices; a 2-D view of the encoder's
latent space coloured by label; training loss per round per worker; model size and per-row inference time of fp32
vs int8. Which rows trained comes from the saved training masks, whatever the training policy was; unlabelled data
get alarm rates and score spreads where labelled data get F1, ROC and confusion matrices.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from services.evaluation.changepoints import format_board  # noqa: E402
from services.evaluation.runner import KINDS  # noqa: E402
from services.evaluation.table import (  # noqa: E402
    KIND_HEAD,
    MODE_NAMES,
    SKAB_LEADERBOARD,
    find_comparison,
    is_skab,
    kinds_notes,
    kinds_rows,
    table_rows,
)
from services.model.metrics import threshold_ratio  # noqa: E402

FIGURES = {
    "fig-distribution": "Reconstruction-error distribution with the threshold",
    "fig-timeline": "Anomaly score over time per experiment",
    "fig-roc": "ROC and precision-recall curves",
    "fig-confusion": "Confusion matrices",
    "fig-latent": "Latent space of the encoder",
    "fig-loss": "Training loss per round per worker",
    "fig-size-time": "Model size and per-row inference time, fp32 vs int8",
}
SERVED = ("federated", "int8")  # what the workers serve by default
COLOURS = {"federated": "tab:blue", "centralised": "tab:orange", "local": "tab:green", "reference": "tab:grey"}


class Data:
    def __init__(self, folder: Path):
        self.results = json.loads((folder / "results.json").read_text())
        with np.load(folder / "arrays.npz") as z:
            self.arrays = {k: z[k] for k in z.files}
        self.workers: list[str] = self.results["workers"]
        self.experiments: dict[str, list[str]] = self.results["experiments"]
        self.labelled: bool = self.results.get("labelled", True)
        self.reference: dict | None = self.results.get("reference")

    def labels(self, worker: str, i: int) -> np.ndarray | None:
        return self.arrays.get(f"labels/{worker}/{i}")

    def train_mask(self, worker: str, i: int) -> np.ndarray:
        """True for the rows that trained (and set the threshold), as the data's training policy chose them."""
        return self.arrays[f"train_mask/{worker}/{i}"]

    def train_scores(self, mode: str, kind: str, worker: str) -> np.ndarray:
        return np.concatenate([self.scores(mode, kind, worker, i)[self.train_mask(worker, i)]
                               for i in range(len(self.experiments[worker]))])

    def scores(self, mode: str, kind: str, worker: str, i: int) -> np.ndarray:
        """``mode`` "reference" (kind ignored) is the reference detector's scores."""
        key = f"scores/reference/{worker}/{i}" if mode == "reference" else f"scores/{mode}/{kind}/{worker}/{i}"
        return self.arrays[key]

    def threshold(self, mode: str, kind: str, worker: str) -> float:
        key = f"threshold/reference/{worker}" if mode == "reference" else f"threshold/{mode}/{kind}/{worker}"
        return float(self.arrays[key][0])

    def held_out(self, mode: str, kind: str, worker: str | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        """Held-out labels (None when unlabelled) and scores divided by the worker's threshold (pooled over workers
        if None)."""
        labels, ratios = [], []
        for w in [worker] if worker else self.workers:
            t = self.threshold(mode, kind, w)
            for i in range(len(self.experiments[w])):
                held = ~self.train_mask(w, i)
                run_labels = self.labels(w, i)
                if run_labels is not None:
                    labels.append(run_labels[held])
                ratios.append(threshold_ratio(self.scores(mode, kind, w, i)[held], t))
        return (np.concatenate(labels) if self.labelled else None), np.concatenate(ratios)


def _shade(ax, mask: np.ndarray, colour: str, alpha: float) -> None:
    """Shade the rows where ``mask`` holds, full height, as one artist (a training mask may be thousands of pieces)."""
    x = np.arange(len(mask) + 1) - 0.5
    ax.fill_between(x, 0, 1, where=np.append(mask, False), step="post", transform=ax.get_xaxis_transform(),
                    color=colour, alpha=alpha, lw=0)


def _no_labels() -> str:
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.text(0.5, 0.5, "no labels in this data: no ROC, precision-recall or confusion matrix (see the alarm rates)",
            ha="center", va="center")
    ax.axis("off")
    return _png(fig)


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def fig_distribution(d: Data) -> str:
    mode, kind = SERVED
    fig, axes = plt.subplots(1, len(d.workers), figsize=(5 * len(d.workers), 3.6), squeeze=False)
    for ax, w in zip(axes[0], d.workers):
        t = d.threshold(mode, kind, w)
        train = d.train_scores(mode, kind, w)
        labels, ratio = d.held_out(mode, kind, w)
        held = ratio * t
        low = max(min(train.min(), held.min() if len(held) else np.inf), 1e-4)
        bins = np.logspace(np.log10(low), np.log10(max(train.max(), held.max() if len(held) else 0) * 1.01), 60)
        ax.hist(train, bins=bins, alpha=0.45, label="training rows", color="grey", density=True)
        if labels is None:
            ax.hist(held, bins=bins, alpha=0.55, label=f"held-out rows ({100 * np.mean(ratio > 1):.1f} % alarm)",
                    color="tab:blue", density=True)
        else:
            for value, name, colour in ((0, "held-out normal", "tab:blue"), (1, "held-out anomaly", "tab:red")):
                if np.any(labels == value):
                    ax.hist(held[labels == value], bins=bins, alpha=0.55, label=name, color=colour, density=True)
        ax.axvline(t, color="k", ls="--", lw=1.2, label=f"threshold {t:.3g}")
        ax.set_xscale("log")
        ax.set_title(f"{w}")
        ax.set_xlabel("reconstruction error (MSE per row)")
    axes[0][0].set_ylabel("density")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{MODE_NAMES[mode]} {kind} model (served by the workers)", y=1.02)
    return _png(fig)


def fig_timeline(d: Data) -> str:
    mode, kind = SERVED
    runs = [(w, i) for w in d.workers for i in range(len(d.experiments[w]))]
    cols = 6
    rows = int(np.ceil(len(runs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    for ax, (w, i) in zip(axes.flat, runs):
        s, y, t = d.scores(mode, kind, w, i), d.labels(w, i), d.threshold(mode, kind, w)
        x = np.arange(len(s))
        _shade(ax, d.train_mask(w, i), "grey", 0.15)
        if y is not None:
            _shade(ax, y == 1, "tab:red", 0.18)
        ax.plot(x, np.maximum(s, 1e-4), lw=0.6, color="tab:blue")
        ax.axhline(t, color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(d.experiments[w][i], fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{MODE_NAMES[mode]} {kind} score per row (log); grey: training rows, red: labelled anomaly, "
                 "dashed: the worker's threshold", y=1.0)
    fig.tight_layout()
    return _png(fig)


def fig_roc(d: Data) -> str:
    if not d.labelled:
        return _no_labels()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.4))
    curves = [(mode, kind, f"{MODE_NAMES[mode]} {kind}", d.results["modes"][mode]["kinds"][kind]["pooled"])
              for mode in d.results["modes"] for kind in KINDS]
    if d.reference:
        curves.append(("reference", "", d.reference["name"], d.reference["pooled"]))
    for mode, kind, name, p in curves:
        labels, ratio = d.held_out(mode, kind)
        if "roc_auc" not in p:
            continue
        fpr, tpr, _ = roc_curve(labels, ratio)
        precision, recall, _ = precision_recall_curve(labels, ratio)
        style = dict(color=COLOURS[mode], ls=":" if kind == "int8" else "-", lw=1.3)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {p['roc_auc']:.3f})", **style)
        pr_ax.plot(recall, precision, label=f"{name} (AP {p['pr_auc']:.3f})", **style)
        roc_ax.plot(p["far"] / 100, 1 - p["mar"] / 100, "o", color=COLOURS[mode], ms=4)
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    roc_ax.set(xlabel="false alarm rate", ylabel="detection rate (1 − MAR)", title="ROC (pooled; dots: thresholds)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall (pooled)")
    roc_ax.legend(fontsize=7)
    pr_ax.legend(fontsize=7)
    return _png(fig)


def fig_confusion(d: Data) -> str:
    if not d.labelled:
        return _no_labels()
    modes = list(d.results["modes"])
    fig, axes = plt.subplots(len(KINDS), len(modes), figsize=(3.3 * len(modes), 5.8), squeeze=False)
    for c, mode in enumerate(modes):
        for r, kind in enumerate(KINDS):
            counts = d.results["modes"][mode]["kinds"][kind]["pooled"]["counts"]
            matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
            ax = axes[r][c]
            ax.imshow(matrix, cmap="Blues")
            for (i, j), v in np.ndenumerate(matrix):
                ax.text(j, i, f"{v}\n{100 * v / matrix[i].sum():.1f}%", ha="center", va="center", fontsize=9,
                        color="white" if v > matrix.max() / 2 else "black")
            ax.set_xticks([0, 1], ["normal", "anomaly"])
            ax.set_yticks([0, 1], ["normal", "anomaly"])
            ax.set_title(f"{MODE_NAMES[mode]} {kind}", fontsize=9)
            if c == 0:
                ax.set_ylabel("true")
            if r == len(KINDS) - 1:
                ax.set_xlabel("predicted")
    fig.tight_layout()
    return _png(fig)


def fig_latent(d: Data) -> str:
    fig, ax = plt.subplots(figsize=(6.2, 5))
    if "latent/xy" not in d.arrays:
        ax.text(0.5, 0.5, "latent view not computed", ha="center")
        return _png(fig)
    xy, label, held = d.arrays["latent/xy"], d.arrays["latent/label"], d.arrays["latent/held_out"]
    groups = [((label == 0) & ~held, "training rows (normal)", "grey"),
              ((label == 0) & held, "held-out normal", "tab:blue"), (label == 1, "anomaly", "tab:red"),
              ((label == -1) & ~held, "training rows (unlabelled)", "grey"),
              ((label == -1) & held, "held-out rows (unlabelled)", "tab:blue")]
    for mask, name, colour in groups:
        ax.scatter(xy[mask, 0], xy[mask, 1], s=5, alpha=0.6, color=colour, label=name)
    info = d.results["modes"]["federated"].get("latent", {})
    ax.set_title(f"{info.get('method', '')} of the {info.get('bottleneck', '?')}-unit bottleneck "
                 "(federated model)", fontsize=10)
    ax.legend(fontsize=8, markerscale=3)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def fig_loss(d: Data) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    styles = {"valve1": "-", "valve2": "--", "other": "-."}
    for mode, entry in d.results["modes"].items():
        for w, losses in entry["losses"].items():
            ls = styles.get(w, "-") if w != "all" else "-"
            ax.plot(np.arange(1, len(losses) + 1), losses, ls=ls, color=COLOURS[mode], marker="o", ms=3,
                    label=f"{MODE_NAMES[mode]} {w if w != 'all' else '(pooled)'}")
    ax.set(xlabel="round (local-only and centralised: the same number of epochs per point)",
           ylabel="training loss (MSE)", title="training loss per round per worker")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def fig_size_time(d: Data) -> str:
    fed = d.results["modes"]["federated"]
    timing, size = fed.get("timing", {}), fed["int8_vs_fp32"]["bytes"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    colours = ["tab:blue", "tab:purple"]
    axes[0].bar(KINDS, [size[k] / 1024 for k in KINDS], color=colours)
    axes[0].set_title("ONNX file size (kB)")
    for ax, key, title in ((axes[1], "us_per_row_batch1", "µs per call, 1 row"),
                           (axes[2], "us_per_row_batch256", "µs per row, batches of 256")):
        values = [timing.get(k, {}).get(key, np.nan) for k in KINDS]
        ax.bar(KINDS, values, color=colours)
        ax.set_title(title)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    for x, k in enumerate(KINDS):
        axes[0].text(x, size[k] / 1024, f"{size[k] / 1024:.1f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle("onnxruntime, one thread (as /detect runs it); model scoring only, no HTTP", y=1.03)
    fig.tight_layout()
    return _png(fig)


def _table(headers: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _f(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def comparison_table(d: Data) -> str:
    rows, classes = [], []
    if not d.labelled:
        for r in table_rows(d.results):
            rows.append([r["name"], r["rows"], f"{r['alarm_rate']:.2f}", _f(r.get("ratio_p50"), 3),
                         _f(r.get("ratio_p90"), 3), _f(r.get("ratio_p99"), 3)])
            classes.append("ours" if r["ours"] else "")
        return _table(["detector", "held-out rows", "alarms %", "score/threshold p50", "p90", "p99"], rows, classes)
    for r in table_rows(d.results):
        rows.append([r["name"], f"{r['f1']:.3f}", f"{r['far']:.2f}", f"{r['mar']:.2f}", _f(r.get("roc_auc"), 4),
                     _f(r.get("pr_auc"), 4)])
        classes.append("ours" if r["ours"] else "")
    if is_skab(d.results):
        for name, f1, far, mar in SKAB_LEADERBOARD:
            rows.append([f"SKAB leaderboard: {name}", f"{f1:.2f}", f"{far:.2f}", f"{mar:.2f}", "", ""])
            classes.append("")
    return _table(["detector", "F1", "FAR %", "MAR %", "ROC-AUC", "PR-AUC"], rows, classes)


def worker_table(d: Data) -> str:
    entries = [(MODE_NAMES[mode], kind, entry["kinds"][kind]["workers"])
               for mode, entry in d.results["modes"].items() for kind in KINDS]
    if d.reference:
        entries.append((d.reference["name"], "scikit-learn", d.reference["workers"]))
    rows = []
    for training, model, workers in entries:
        for w, m in workers.items():
            if d.labelled:
                rows.append([training, model, w, m["rows"], f"{m['f1']:.3f}", f"{m['far']:.2f}", f"{m['mar']:.2f}",
                             _f(m.get("roc_auc"), 4), _f(m.get("pr_auc"), 4), f"{m['threshold']:.4g}"])
            else:
                rows.append([training, model, w, m["rows"], f"{m['alarm_rate']:.2f}", f"{m['threshold']:.4g}"])
    if d.labelled:
        return _table(["training", "model", "worker", "held-out rows", "F1", "FAR %", "MAR %", "ROC-AUC", "PR-AUC",
                       "threshold"], rows)
    return _table(["training", "model", "worker", "held-out rows", "alarms %", "threshold"], rows)


def kinds_section(d: Data, results_dir: Path) -> str:
    """Every model kind in every mode: across data sets when the evaluation ran several, else this data set's."""
    summary = find_comparison(results_dir)
    own = d.results.get("model_kinds")
    name = "skab" if is_skab(d.results) else "this data"
    comparison = summary["comparison"] if summary else ({name: own} if own else None)
    if not comparison:
        return "<p>Only the config's model kind was evaluated (<code>fedad evaluate --kinds</code>).</p>"
    notes = kinds_notes(comparison) + [f"{name} skipped: {reason}"
                                       for name, reason in (summary or {}).get("skipped", {}).items()]
    return (_table(KIND_HEAD, kinds_rows(comparison)) + "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
            + "</ul><p>Figures of the served model (int8, or fp32 where int8 is refused), pooled held-out rows. "
            "s / round: training of all workers per round, in-process on one core. µs/row: onnxruntime, one thread, "
            "model only. Training round: one round of the first worker in the worker's own training process (CPU "
            "seconds, peak resident memory).</p>")


def checks_table(d: Data) -> str:
    rows = [[("✔" if c["ok"] else "✘"), name, c["value"]] for name, c in d.results["checks"].items()]
    return _table(["", "target", "measured"], rows, ["ok" if c["ok"] else "fail" for c in d.results["checks"].values()])


def quantisation_table(d: Data) -> str:
    rows = []
    for mode, entry in d.results["modes"].items():
        q = entry["int8_vs_fp32"]
        diff = q["roc_auc_difference"]
        rows.append([MODE_NAMES[mode], "" if diff is None else f"{diff:+.4f}", f"{100 * q['decision_agreement']:.2f} %",
                     f"{q['bytes']['fp32']} B", f"{q['bytes']['int8']} B"])
    return _table(["training", "ROC-AUC int8 − fp32", "same decision as fp32", "fp32 ONNX", "int8 ONNX"], rows)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
pre { white-space: pre-wrap; font-size: 0.85em; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr.ours td { background: #eef5ff; font-weight: 600; } tr.ok td:first-child { color: #1a7f37; }
tr.fail td:first-child { color: #c00; } img { max-width: 100%; } figure { margin: 1em 0 2em; }
figcaption { font-size: 0.9em; color: #555; } code { background: #f4f4f4; padding: 1px 4px; }
"""


def write_report(results_dir: Path, out: Path) -> Path:
    d = Data(Path(results_dir))
    s = d.results["settings"]
    data = s["data"]
    skab = is_skab(d.results)
    what = d.results.get("data", "SKAB")
    figures = {
        "fig-distribution": (fig_distribution(d), "Per worker, the served model's score of every row: training rows "
                             "(which set the threshold) and held-out rows (normal and anomalous where labelled)."),
        "fig-timeline": (fig_timeline(d), "Every run, rows in order; grey: the rows that trained (chosen by "
                         f"data.training: {data['training']['policy']}); scaling baseline: {data['baseline']}."),
        "fig-roc": (fig_roc(d), "Pooled over all held-out rows; each worker's scores are divided by its own "
                    "threshold, so 1.0 is the alarm limit. Solid: fp32 (and the reference), dotted: int8."),
        "fig-confusion": (fig_confusion(d), "Pooled held-out rows; percentages per true class "
                          "(FAR = normal→anomaly, MAR = anomaly→normal)."),
        "fig-latent": (fig_latent(d), "A random sample of rows (training and held-out) from all workers."),
        "fig-loss": (fig_loss(d), "Federated: each worker's local loss per round as it reported it to the "
                     "aggregator. Local-only and centralised: mean loss over the same number of epochs."),
        "fig-size-time": (fig_size_time(d), "Median over many calls on this machine; compare with each other, "
                          "not across machines."),
    }
    protocol = ("SKAB's outlier detection — each experiment file's first rows train and calibrate, the rest is "
                "scored; predictions of all files pooled; F1, FAR (false alarm rate) and MAR (missed alarm rate) as "
                "SKAB computes them." if skab else
                "the rows the training policy chose train and calibrate, every other row is scored; predictions of "
                "all workers pooled" + ("; F1, FAR (false alarm rate) and MAR (missed alarm rate)." if d.labelled
                                        else "; no labels, so alarm rates and score spreads instead of F1."))
    reference = (f" The reference {d.reference['name']} (scikit-learn) is fitted per node on the same training "
                 "inputs, its threshold by the same rule on its own training scores." if d.reference else "")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fedad detection quality: {html.escape(what)}"
        "</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>fedad: detection quality on {html.escape(what)}</h1>",
        f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from <code>{html.escape(str(results_dir))}"
        f"</code> (evaluation took {d.results['seconds']:.0f} s). Protocol: {protocol} "
        f"Thresholds come from training rows only.{reference}</p>",
        "<h2>Verdict</h2><p>" + html.escape((d.results.get("verdict") or {}).get("line", "no verdict: no "
                                                                                   "reference detector was run"))
        + "</p>",
        "<h2>" + ("Comparison with SKAB's leaderboard" if skab else "Comparison") + "</h2>", comparison_table(d),
        *(["<h2>SKAB's changepoint board</h2><pre>" + html.escape("\n".join(format_board(d.results["changepoints"])))
            + "</pre>"] if d.results.get("changepoints") else []),
        "<h2>Model kinds</h2>", kinds_section(d, Path(results_dir)),
        "<h2>Targets</h2>", checks_table(d),
        "<h2>Per worker</h2>", worker_table(d),
        "<h2>int8 vs fp32</h2>", quantisation_table(d),
        "<h2>Settings</h2><pre>" + html.escape("\n".join(f"{k}: {json.dumps(v)}" for k, v in s.items()))
        + "</pre><p>Any of them can be changed in the config file or with <code>FEDAD__SECTION__KEY=value make "
        "evaluate</code>.</p>",
    ]
    for key, title in FIGURES.items():
        png, caption = figures[key]
        parts.append(f"<h2 id='{key}'>{html.escape(title)}</h2><figure><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{png}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out
