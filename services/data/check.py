"""``fedad data check``: every worker's data read exactly as training will read it, summarised, every problem listed.

A node's report says what training would see (files, runs, rows, the clock, each column's type, range, missing share
and levels, the label balance, which rows train, the model's input width) and lists every problem that stops it,
with the same messages a worker refuses to start with: both come from the same reading (services/data/tabular.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.config import DataSettings, Settings, WorkerSettings
from services.data.node import NodeData
from services.data.selection import training_selection
from services.data.source import DataError, Run
from services.data.sources import open_source
from services.data.tabular import Table, runs_of
from services.data.windows import Preprocessing


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
    held_out_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def check_node(settings: Settings, worker: WorkerSettings) -> NodeReport:
    data = settings.data_for(worker)
    report = NodeReport(worker=worker.id, partition=list(worker.partition))
    try:
        source = open_source(settings, worker)
        tables: list[Table] = source.tables() if hasattr(source, "tables") else []
        report.files = [t.name for t in tables]
        report.problems = [p for t in tables for p in t.problems]
        if report.problems:
            return report
        runs = runs_of(tables, data, announce=False) if tables else source.runs()
        _summarise(report, tables, runs, data)
        node = NodeData(runs, Preprocessing.from_settings(settings.data), training_selection(data.training))
        _training(report, node, data)
    except DataError as exc:
        report.problems.extend(str(exc).splitlines())
    return report


def check(settings: Settings, worker_ids: list[str] | None = None) -> list[NodeReport]:
    return [check_node(settings, w) for w in settings.workers if not worker_ids or w.id in worker_ids]


def _summarise(report: NodeReport, tables: list[Table], runs: list[Run], data: DataSettings) -> None:
    report.runs = len(runs)
    report.rows = sum(len(r.values) for r in runs)
    report.rows_read = sum(t.rows_read for t in tables) if tables else report.rows
    report.dropped = sum(t.dropped for t in tables)
    report.filled = sum(t.filled for t in tables)
    report.duplicates = sum(t.duplicates for t in tables)
    report.out_of_order = sum(t.out_of_order for t in tables)
    values = np.concatenate([r.values for r in runs]) if runs else np.zeros((0, len(data.columns)))
    stamped = [r.timestamps for r in runs if r.timestamps is not None and len(r.timestamps)]
    if stamped:
        report.start = min(t[0] for t in stamped)
        report.end = max(t[-1] for t in stamped)
        steps = np.concatenate([np.diff(t).astype(np.int64) for t in stamped]) / 1000.0
        positive = steps[steps > 0]
        if len(positive):
            report.interval_s = float(np.median(positive))
            report.gaps = int((positive > 2 * report.interval_s).sum())
    position = 0
    source = data.source
    for name in data.features:
        cat = source.categorical.get(name)
        width = len(cat.levels) if cat and cat.encoding == "onehot" else 1
        block = values[:, position:position + width]
        position += width
        missing = sum(t.missing.get(name, 0) for t in tables) / max(report.rows_read, 1)
        if cat is not None:
            levels = {level: sum(t.levels.get(name, {}).get(level, 0) for t in tables) for level in cat.levels}
            report.columns.append(Column(name, f"categorical ({'codes' if cat.encoding == 'codes' else 'one-hot'})",
                                         missing=missing, levels=levels))
        else:
            low, high = (float(block.min()), float(block.max())) if len(block) else (None, None)
            report.columns.append(Column(name, "number", low, high, missing))
    if all(r.labels is not None for r in runs) and runs:
        labels = np.concatenate([r.labels for r in runs])
        report.labels = (int((labels == 0).sum()), int((labels != 0).sum()))


def _training(report: NodeReport, node: NodeData, data: DataSettings) -> None:
    report.train_rows = int(sum(m.sum() for m in node.masks))
    report.held_out_rows = report.rows - report.train_rows
    if report.train_rows == 0:
        report.problems.append(f"no row would train ({describe_training(data)})")
        return
    if data.baseline == "run":
        short = [run.name for run, m in zip(node.runs, node.masks) if m.sum() < 2]
        if short:
            report.problems.append(f"baseline run scales each run by its own training rows, but these runs have "
                                   f"fewer than 2: {short[:10]}{' ...' if len(short) > 10 else ''}")


def describe_training(data: DataSettings) -> str:
    t = data.training
    if t.policy == "first_rows":
        return f"the first {t.rows} rows of each run"
    if t.policy == "before":
        return f"rows before {t.before}"
    if t.policy == "labelled_normal":
        return "rows labelled normal" if t.share >= 1 else f"{t.share:.0%} of the rows labelled normal (seed {t.seed})"
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
    lines.append(f"  runs    {report.runs}, rows {report.rows}{extra}")
    if report.start is not None:
        clock = f"  time    {_when(report.start)} → {_when(report.end)}"
        if report.interval_s is not None:
            clock += f", a row every {_seconds(report.interval_s)} (median)"
        lines.append(clock)
        lines.append(f"          gaps (> 2 × interval): {report.gaps}, duplicate times: {report.duplicates}, "
                     f"out-of-order rows: {report.out_of_order} (rows are ordered by time)")
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
    lines.append(f"  train   {describe_training(data)}: {report.train_rows} rows train, "
                 f"{report.held_out_rows} held out")
    channels = len(settings.data.model_columns)
    shape = f"{len(settings.data.window_stats)} window statistics" if settings.data.window_stats \
        else f"a window of {settings.data.window} rows" if settings.data.window > 1 else "single rows"
    lines.append(f"  model   input width {settings.input_width} ({channels} channels × {shape}): "
                 f"{settings.model_shape}, score {settings.model.score}")
    lines.append("  usable")
    return "\n".join(lines)


def _when(t: np.datetime64 | None) -> str:
    text = str(t).replace("T", " ")  # the sources stamp rows in milliseconds
    return text.removesuffix(".000")
