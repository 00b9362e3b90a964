"""``fedad data check``: every worker's data read exactly as training will read it, summarised, every problem listed.

A node's report says what training would see (files, runs, rows, the clock, each column's type, range, missing share
and levels, the label balance, which rows train, the model's input width) and lists every problem that stops it,
with the same messages a worker refuses to start with: both come from the same reading (services/data/tabular.py).

With ``data.split`` a node trains on its part of files that every node of the partition reads whole: the rows,
columns, levels and labels are its part's, the clock figures (duplicate times, out-of-order rows, gaps) the
files'. Warnings do not stop a node but say where its figures would mislead: labels that separate by recording
session or period rather than by fault, and inputs with so few distinct rows that the model learns them by heart.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np

from services.config import DataSettings, Settings, WorkerSettings
from services.data.node import NodeData
from services.data.selection import training_selection
from services.data.source import DataError, Run
from services.data.sources import open_source
from services.data.split import SplitSource
from services.data.tabular import Table, TabularSource, runs_of
from services.data.windows import Preprocessing

FEW_DISTINCT_ROWS = 20  # training rows with at most this many distinct values over the model's channels: a warning
SHOWN_RUNS = 4  # run names listed in a warning, the rest counted
WIDTH = 118  # a warning's lines, wrapped


@dataclass
class Column:
    name: str
    kind: str  # number | categorical (codes) | categorical (one-hot)
    low: float | None = None
    high: float | None = None
    missing: float = 0.0  # share of the rows read
    levels: dict[str, int] = field(default_factory=dict)


@dataclass
class NodeReport:
    worker: str
    partition: list[str]
    files: list[str] = field(default_factory=list)
    split: tuple[int, int] | None = None  # (this node's part, parts) under data.split
    runs: int = 0
    rows: int = 0
    rows_read: int = 0
    dropped: int = 0
    filled: int = 0
    start: np.datetime64 | None = None
    end: np.datetime64 | None = None
    interval_s: float | None = None
    gaps: int = 0  # clock steps longer than twice the usual interval
    duplicates: int = 0
    out_of_order: int = 0
    columns: list[Column] = field(default_factory=list)
    labels: tuple[int, int] | None = None  # (normal, anomalous) rows
    train_rows: int = 0
    train_anomalous: int = 0  # training rows labelled anomalous (first_rows with count: all, policy all)
    held_out_rows: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def check_node(settings: Settings, worker: WorkerSettings) -> NodeReport:
    data = settings.data_for(worker)
    report = NodeReport(worker=worker.id, partition=list(worker.partition))
    try:
        source = open_source(settings, worker)
        read = source.source if isinstance(source, SplitSource) else source
        tables: list[Table] = read.tables() if isinstance(read, TabularSource) else []
        report.files = [t.name for t in tables]
        report.problems = [p for t in tables for p in t.problems]
        if report.problems:
            return report
        whole = runs_of(tables, data, announce=False) if tables else read.runs()
        runs = whole
        if isinstance(source, SplitSource):
            report.split = (source.part, source.parts)
            runs = source.part_of(whole)
        _files(report, tables, whole)
        _summarise(report, tables, runs, data)
        node = NodeData(runs, Preprocessing.from_settings(settings.data), training_selection(data.training))
        _training(report, node, data)
        if report.usable:
            report.warnings = [w for w in (segregation(runs), near_constant(node, settings, data)) if w]
    except DataError as exc:
        report.problems.extend(str(exc).splitlines())
    return report


def check(settings: Settings, worker_ids: list[str] | None = None) -> list[NodeReport]:
    return [check_node(settings, w) for w in settings.workers if not worker_ids or w.id in worker_ids]


def _files(report: NodeReport, tables: list[Table], runs: list[Run]) -> None:
    """What the files hold as read, before any split: rows read, dropped and filled, and their clock."""
    report.rows_read = sum(t.rows_read for t in tables) if tables else sum(len(r.values) for r in runs)
    report.dropped = sum(t.dropped for t in tables)
    report.filled = sum(t.filled for t in tables)
    report.duplicates = sum(t.duplicates for t in tables)
    report.out_of_order = sum(t.out_of_order for t in tables)
    stamped = [r.timestamps for r in runs if r.timestamps is not None and len(r.timestamps)]
    if stamped:
        report.start = min(t[0] for t in stamped)
        report.end = max(t[-1] for t in stamped)
        steps = np.concatenate([np.diff(t).astype(np.int64) for t in stamped]) / 1000.0
        positive = steps[steps > 0]
        if len(positive):
            report.interval_s = float(np.median(positive))
            report.gaps = int((positive > 2 * report.interval_s).sum())


def _summarise(report: NodeReport, tables: list[Table], runs: list[Run], data: DataSettings) -> None:
    """What this node's rows hold: runs, rows, each column's range or levels, the labels."""
    report.runs = len(runs)
    report.rows = sum(len(r.values) for r in runs)
    values = np.concatenate([r.values for r in runs]) if runs else np.zeros((0, len(data.columns)))
    position = 0
    source = data.source
    for name in data.features:
        cat = source.categorical.get(name)
        width = len(cat.states) if cat and cat.encoding == "onehot" else 1
        block = values[:, position:position + width]
        position += width
        missing = sum(t.missing.get(name, 0) for t in tables) / max(report.rows_read, 1)
        if cat is not None:
            codes = block[:, 0] if cat.encoding == "codes" else block.argmax(axis=1)
            counts = np.bincount(codes.astype(np.int64), minlength=len(cat.states))
            report.columns.append(Column(name, f"categorical ({'codes' if cat.encoding == 'codes' else 'one-hot'})",
                                         missing=missing, levels=dict(zip(cat.states, counts.tolist()))))
        else:
            low, high = (float(block.min()), float(block.max())) if len(block) else (None, None)
            report.columns.append(Column(name, "number", low, high, missing))
    if all(r.labels is not None for r in runs) and runs:
        labels = np.concatenate([r.labels for r in runs])
        report.labels = (int((labels == 0).sum()), int((labels != 0).sum()))


def _training(report: NodeReport, node: NodeData, data: DataSettings) -> None:
    report.train_rows = int(sum(m.sum() for m in node.masks))
    report.train_anomalous = sum(int((run.labels[m] != 0).sum()) for run, m in zip(node.runs, node.masks)
                                 if run.labels is not None)
    report.held_out_rows = report.rows - report.train_rows
    if report.train_rows == 0:
        report.problems.append(f"no row would train ({describe_training(data)})")
        return
    if data.baseline == "run":
        short = [run.name for run, m in zip(node.runs, node.masks) if m.sum() < 2]
        if short:
            report.problems.append(f"baseline run scales each run by its own training rows, but these runs have "
                                   f"fewer than 2: {short[:10]}{' ...' if len(short) > 10 else ''}")


def segregation(runs: list[Run]) -> str | None:
    """A warning when normal and anomalous rows never share a run, or occupy disjoint time spans: any difference
    between recording sessions or periods (a level, a noise, which window statistics pick up) then separates them
    as well as the fault does, so held-out figures measure the session, not the fault."""
    labels = [r.labels for r in runs if r.labels is not None]
    if not runs or len(labels) < len(runs):
        return None
    normal = [np.asarray(run_labels == 0) for run_labels in labels]
    n_normal, n_anomalous = sum(int(m.sum()) for m in normal), sum(int((~m).sum()) for m in normal)
    if not n_normal or not n_anomalous:
        return None
    spans = ""
    times = [r.timestamps for r in runs if r.timestamps is not None]
    if len(times) == len(runs):
        normal_times = np.concatenate([t[m] for t, m in zip(times, normal)])
        anomalous_times = np.concatenate([t[~m] for t, m in zip(times, normal)])
        a, b = normal_times.min(), normal_times.max()
        c, d = anomalous_times.min(), anomalous_times.max()
        spans = (f"normal rows {_when(a)} → {_when(b)} ({n_normal} rows), anomalous rows {_when(c)} → {_when(d)} "
                 f"({n_anomalous} rows)")
        disjoint_times = b < c or d < a
    else:
        disjoint_times = False
    mixed = any(m.any() and not m.all() for m in normal)
    if mixed and not disjoint_times:
        return None
    if not mixed:
        where = (f"no run holds both: normal rows only in {_names([r for r, m in zip(runs, normal) if m.all()])}, "
                 f"anomalous rows only in {_names([r for r, m in zip(runs, normal) if not m.any()])}")
        where += f"; {spans}" if spans else ""
    else:
        where = f"their times do not overlap: {spans}"
    return (f"labels separate by recording session or period, not within one: {where}. Whatever differs between "
            "the sessions (a level, a noise that window statistics pick up) then tells the rows apart as well as "
            "the fault does, so held-out figures measure the session, not the fault; compare with normal rows "
            "recorded beside the faults")


def near_constant(node: NodeData, settings: Settings, data: DataSettings) -> str | None:
    """A warning when the training rows hold few distinct values over the model's channels (a device of a few
    states, a sensor that never moved): the model reconstructs them by heart, normal scores and the threshold
    calibrated on them sit near 0; or when a channel never changes (its scale is undefined)."""
    train = node.train_raw()
    if not len(train):
        return None
    columns = data.columns
    channels = settings.data.model_columns
    rows = train[:, [columns.index(c) for c in channels]]
    distinct, counts = np.unique(rows, axis=0, return_counts=True)
    top = counts.max() / len(rows)
    threshold = settings.threshold
    dominant = threshold.rule == "quantile" and top >= threshold.quantile
    if len(distinct) <= FEW_DISTINCT_ROWS or dominant:
        why = (f"one row is {top:.1%} of them, at least the threshold's quantile {threshold.quantile:g}, so the "
               "threshold is that row's score" if dominant else
               f"the most common one is {top:.0%} of them")
        return (f"near-constant input: the {len(rows)} training rows hold {len(distinct)} distinct value(s) of the "
                f"model's channels {channels} ({why}); the model can learn them by heart, so normal rows score "
                "about 0 and so does the threshold. Give the model channels that vary (data.features, "
                "data.model_features) or more varied training rows (data.training)")
    still = [c for i, c in enumerate(channels) if np.all(rows[:, i] == rows[0, i])]
    if still:
        return (f"channel(s) {still} never change over the {len(rows)} training rows: their scale is undefined, "
                "so any other value scores as an outsized error; leave them out (data.model_features) or train "
                "on rows where they move")
    return None


def _names(runs: list[Run]) -> str:
    names = [r.name for r in runs]
    shown = ", ".join(names[:SHOWN_RUNS]) + (f", ... ({len(names)} runs)" if len(names) > SHOWN_RUNS else "")
    return f"{len(names)} run(s) ({shown})" if len(names) > 1 else shown


def describe_training(data: DataSettings) -> str:
    """Which rows train, as the run output and ``fedad data check`` say it (with whether labels count)."""
    t = data.training
    labelled = data.source.label is not None or data.source.kind == "synthetic"
    if t.policy == "first_rows":
        if not labelled:
            return f"the first {t.rows} rows of each run"
        if t.count == "normal":
            return f"the first {t.rows} rows labelled normal of each run (anomalous ones among them held out)"
        return f"the first {t.rows} rows of each run, whatever their label"
    if t.policy == "before":
        return f"rows before {t.before}"
    if t.policy == "labelled_normal":
        if t.share >= 1:
            return "rows labelled normal"
        if t.order == "file":
            return f"the first {t.share:.0%} of each run's rows labelled normal, in the run's order"
        return f"{t.share:.0%} of each run's rows labelled normal, drawn at random (seed {t.seed})"
    return "every row"


def _seconds(s: float) -> str:
    return f"{s:g} s" if s < 120 else f"{s / 60:g} min" if s < 7200 else f"{s / 3600:g} h"


def format_report(report: NodeReport, settings: Settings) -> str:
    """The report as the terminal shows it."""
    data = settings.data_for(settings.worker(report.worker))
    lines = [f"node {report.worker}: partition {report.partition}"]
    if report.files:
        shown = ", ".join(report.files[:6]) + (f", ... ({len(report.files)} files)" if len(report.files) > 6 else "")
        lines.append(f"  files   {shown}")
    if report.problems:
        lines.append(f"  NOT USABLE: {len(report.problems)} problem(s)")
        lines.extend(f"    {p}" for p in report.problems)
        return "\n".join(lines)
    extra = f" (read {report.rows_read}; dropped {report.dropped}, filled forward {report.filled}: missing " \
            f"{data.source.missing})" if report.dropped or report.filled else ""
    if report.split is not None:
        part, parts = report.split
        split = data.split
        assert split is not None
        how = f"{split.method}" + (f" by {split.column}, alpha {split.alpha:g}" if split.method == "dirichlet" else "")
        lines.append(f"  split   part {part + 1} of {parts} of the {report.rows_read - report.dropped} rows read "
                     f"(data.split: {how}, seed {split.seed})")
    lines.append(f"  runs    {report.runs}, rows {report.rows}{extra}")
    if report.start is not None:
        clock = f"  time    {_when(report.start)} → {_when(report.end)}"
        if report.interval_s is not None:
            clock += f", a row every {_seconds(report.interval_s)} (median)"
        lines.append(clock)
        lines.append(f"          gaps (> 2 × interval): {report.gaps}, duplicate times: {report.duplicates}, "
                     f"out-of-order rows: {report.out_of_order} (rows are ordered by time)"
                     + ("; the whole files', before data.split" if report.split else ""))
    else:
        lines.append("  time    no timestamp column: rows in file order")
    lines.append("  columns")
    width = max(len(c.name) for c in report.columns)
    for c in report.columns:
        if c.levels:
            detail = ", ".join(f"{level} {n}" for level, n in c.levels.items())
        else:
            detail = f"{c.low:.6g} … {c.high:.6g}" if c.low is not None else "no rows"
        lines.append(f"    {c.name:<{width}}  {c.kind:<20}  {detail:<28}  missing {100 * c.missing:.1f} %")
    if report.labels is not None:
        normal, anomalous = report.labels
        name = data.source.label.column if data.source.label is not None else "generated"
        lines.append(f"  label   {name}: {normal} normal, {anomalous} anomalous "
                     f"({100 * anomalous / max(normal + anomalous, 1):.1f} %)")
    else:
        lines.append("  label   none: evaluation reports alarm rates, not F1")
    among = f" ({report.train_anomalous} of them labelled anomalous)" if report.train_anomalous else ""
    lines.append(f"  train   {describe_training(data)}: {report.train_rows} rows train{among}, "
                 f"{report.held_out_rows} held out")
    channels = len(settings.data.model_columns)
    shape = f"{len(settings.data.window_stats)} window statistics" if settings.data.window_stats \
        else f"a window of {settings.data.window} rows" if settings.data.window > 1 else "single rows"
    lines.append(f"  model   input width {settings.input_width} ({channels} channels × {shape}): "
                 f"{settings.model_shape}, score {settings.model.score}")
    for warning in report.warnings:
        lines.extend(textwrap.wrap(warning, WIDTH, initial_indent="  WARNING ", subsequent_indent=" " * 10))
    lines.append("  usable" + (f", {len(report.warnings)} warning(s)" if report.warnings else ""))
    return "\n".join(lines)


def _when(t: np.datetime64 | None) -> str:
    text = str(t).replace("T", " ")  # the sources stamp rows in milliseconds
    return text.removesuffix(".000")
