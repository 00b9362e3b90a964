"""The general tabular source: an edge node's CSV or Parquet files, read as config.yaml's ``data.source`` says.

Each file becomes one run, or several when ``run_gap_s`` cuts it where its clock jumps. Columns are taken by name:
the features (numbers, or named states of a categorical column), an optional timestamp (one column, or a date and a
time column) and an optional label. Bad data is never guessed into numbers: every malformed cell or line is a
problem naming ``file:line`` and the offending value, all of them collected so that one ``fedad data check`` lists
everything to fix; only empty / NaN / inf cells may be dropped or filled, and only under a declared policy, counted.

The reading is split in two: ``read_table`` turns one file into a ``Table`` (rows, plus everything ``fedad data
check`` reports about it), ``TabularSource.runs`` turns the tables into runs or raises one DataError listing every
problem — the same lines the check prints, so a service refuses to start with the messages the check gave.
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from services.config import DataSettings, SourceSettings
from services.data.source import DataError, Run

log = logging.getLogger("fedad.data")

DELIMITERS = ",;\t|"
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_EXAMPLES = 5  # problems of one kind in one column of one file listed one by one; the rest are counted


@dataclass
class Table:
    """One file as read: rows that survived (in time order when there is a clock) and what was found on the way."""

    path: Path
    name: str  # path relative to the source's folder, as runs and messages show it
    columns: list[str] = field(default_factory=list)  # the file's own header
    delimiter: str | None = None
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # file line (CSV) or row (Parquet)
    timestamps: np.ndarray | None = None
    labels: np.ndarray | None = None
    rows_read: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # column → empty / NaN / inf cells
    dropped: int = 0
    filled: int = 0
    out_of_order: int = 0  # rows whose time is earlier than the row before them in the file
    duplicates: int = 0  # rows with the same time as another row
    levels: dict[str, dict[str, int]] = field(default_factory=dict)  # categorical column → level → rows
    problems: list[str] = field(default_factory=list)

    def where(self, line: int) -> str:
        return f"{self.name}:{line}" if self.delimiter is not None else f"{self.name}: row {line}"


class _Problems:
    """Problems of one file, the first MAX_EXAMPLES per (kind, column) in full and the rest counted."""

    def __init__(self, table: Table):
        self.table = table
        self.seen: dict[tuple, int] = {}

    def add(self, kind: tuple, message: str) -> None:
        n = self.seen[kind] = self.seen.get(kind, 0) + 1
        if n <= MAX_EXAMPLES:
            self.table.problems.append(message)

    def close(self) -> None:
        for kind, n in self.seen.items():
            if n > MAX_EXAMPLES:
                self.table.problems.append(f"{self.table.name}: ... and {n - MAX_EXAMPLES} more like the above "
                                           f"({kind[0]}{', column ' + repr(kind[1]) if len(kind) > 1 else ''})")


def _natural_key(path: Path) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(path)))


def _suffixes(source: SourceSettings) -> tuple[str, ...]:
    return {"csv": CSV_SUFFIXES, "parquet": PARQUET_SUFFIXES}.get(source.format, CSV_SUFFIXES + PARQUET_SUFFIXES)


def partition_files(root: Path, partition: list[str], source: SourceSettings) -> list[Path]:
    """The files of a partition (folders, globs or files relative to ``root``), each folder in natural order."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (data.source.dir)")
    files: list[Path] = []
    for entry in partition:
        path = root / entry
        if path.is_dir():
            found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _suffixes(source)]
            if not found:
                raise DataError(f"partition entry {entry!r}: the folder {path} holds no {'/'.join(_suffixes(source))}"
                                " files")
            files.extend(sorted(found, key=_natural_key))
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(entry):
            found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
            if not found:
                raise DataError(f"partition entry {entry!r}: no file under {root} matches")
            files.extend(sorted(found, key=_natural_key))
        else:
            raise DataError(f"partition entry {entry!r}: no such folder or file under {root}")
    return files


# -- cells -------------------------------------------------------------------------------------------------------

def _is_missing(cell) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float):
        return not math.isfinite(cell)
    text = str(cell).strip()
    if not text:
        return True
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _number(cell) -> float | None:
    """A cell as a number, or None when it is text (missing cells are decided before)."""
    if isinstance(cell, bool):
        return float(cell)
    if isinstance(cell, (int, float)):
        return float(cell)
    try:
        return float(str(cell).strip())
    except ValueError:
        return None


def _same_value(cell, wanted) -> bool:
    text = str(cell).strip()
    if text == str(wanted).strip():
        return True
    a, b = _number(text), _number(wanted)
    return a is not None and b is not None and a == b


def parse_time(text: str, fmt: str | None) -> datetime:
    """A timestamp cell: with ``fmt`` by strptime, else ISO 8601 (``2020-03-09 10:14:33``, ``…T…``, ``…Z``)."""
    text = text.strip()
    if fmt:
        return datetime.strptime(text, fmt)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        for guess in ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%Y/%m/%d %H:%M:%S"):
            try:
                return datetime.strptime(text, guess)
            except ValueError:
                pass
        raise


def _naive_utc(t: datetime) -> datetime:
    """Times with a zone become UTC wall time, so rows from differently zoned loggers order correctly."""
    offset = t.utcoffset()
    return t if offset is None else (t - offset).replace(tzinfo=None)


# -- files -------------------------------------------------------------------------------------------------------

def _detect_delimiter(header: str) -> str:
    try:
        return csv.Sniffer().sniff(header, delimiters=DELIMITERS).delimiter
    except csv.Error:
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def _csv_records(path: Path, table: Table, source: SourceSettings) -> list[tuple[int, list]] | None:
    """(line number, fields) of every data line of a CSV file; None when the file cannot be read as a table."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        table.problems.append(f"{table.name}: cannot read the file ({exc.strerror})")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        table.problems.append(f"{table.name}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as "
                              "UTF-8")
        return None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        table.problems.append(f"{table.name}: empty file (no header line)")
        return None
    table.delimiter = source.delimiter or _detect_delimiter(lines[0])
    reader = csv.reader(io.StringIO("\n".join(lines) + "\n"), delimiter=table.delimiter, strict=True)
    records = []
    try:
        start = 1
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        shown = lines[start - 1] if start <= len(lines) else ""
        table.problems.append(f"{table.name}:{start}: {_csv_message(str(exc))}: {shown[:120]!r}")
        return None
    table.columns = [c.strip() for c in records[0][1]]
    return records[1:]


def _csv_message(text: str) -> str:
    if "unexpected end of data" in text or "EOF" in text:
        return "a quote opened here is never closed"
    if "expected after" in text:
        return "stray quote inside a field"
    return text


def _parquet_records(path: Path, table: Table) -> list[tuple[int, list]] | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        table.problems.append(f"{table.name}: reading Parquet needs pyarrow (pip install 'fedad[parquet]')")
        return None
    try:
        data = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:  # a broken footer, a truncated page, an unreadable file
        table.problems.append(f"{table.name}: not a readable Parquet file ({exc})")
        return None
    table.columns = [str(c) for c in data.column_names]
    columns = [data.column(i).to_pylist() for i in range(data.num_columns)]
    return [(i + 1, [col[i] for col in columns]) for i in range(data.num_rows)]


def read_table(path: Path, name: str, data: DataSettings) -> Table:
    """Read one file as ``data`` describes it; every problem is in ``table.problems``, nothing raised."""
    source = data.source
    table = Table(path=path, name=name)
    parquet = source.format == "parquet" or (source.format == "auto" and path.suffix.lower() in PARQUET_SUFFIXES)
    records = _parquet_records(path, table) if parquet else _csv_records(path, table, source)
    if records is None:
        return table
    problems = _Problems(table)
    header = table.columns
    wanted = list(data.features) + source.timestamp_columns + ([source.label.column] if source.label else [])
    repeated = sorted({c for c in wanted if header.count(c) > 1})  # a column that is read must be unambiguous
    for c in repeated:
        where = [i + 1 for i, h in enumerate(header) if h == c]
        problems.add(("duplicate", c), f"{table.where(1)}: column name {c!r} appears {len(where)} times "
                                        f"(columns {', '.join(map(str, where))})")
    absent = [c for c in wanted if c not in header]
    if absent:
        problems.add(("absent",), f"{table.name}: no column(s) {absent}; the file has {header}")
    if not records:
        problems.add(("empty",), f"{table.name}: header only, no data rows")
    if absent or repeated or not records:
        problems.close()
        return table
    _decode_rows(table, records, data, problems)
    problems.close()
    return table


def _decode_rows(table: Table, records: list[tuple[int, list]], data: DataSettings, problems: _Problems) -> None:
    source = data.source
    index = {c: table.columns.index(c) for c in table.columns}
    width = len(table.columns)
    out_columns = data.columns
    values: list[list[float]] = []
    lines: list[int] = []
    times: list[datetime | None] = []
    labels: list[int | None] = []
    missing_at: list[int] = []
    table.missing = {c: 0 for c in data.features + source.timestamp_columns
                     + ([source.label.column] if source.label else [])}
    table.levels = {c: {state: 0 for state in cat.states} for c, cat in source.categorical.items()}
    codes = {c: cat.codes() for c, cat in source.categorical.items()}  # spelling → code, built once per file
    for line, fields in records:
        table.rows_read += 1
        if len(fields) != width:
            shown = (table.delimiter or ",").join(map(str, fields))[:120]
            problems.add(("fields",), f"{table.where(line)}: {len(fields)} field(s), the header has {width} "
                                      f"(delimiter {table.delimiter!r}): {shown!r}")
            continue
        row: list[float] = []
        gaps: list[str] = []
        bad = False
        for name in data.features:
            cell = fields[index[name]]
            cat = source.categorical.get(name)
            if _is_missing(cell):
                table.missing[name] += 1
                gaps.append(name)
                row.extend([math.nan] * (len(cat.states) if cat and cat.encoding == "onehot" else 1))
                continue
            if cat is not None:
                code = codes[name].get(cat.normalise(str(cell)))
                if code is None:
                    problems.add(("level", name), f"{table.where(line)}: column {name!r} holds {cell!r}, not "
                                                  f"{cat.describe()}")
                    bad = True
                    continue
                table.levels[name][cat.states[code]] += 1
                row.extend([float(code)] if cat.encoding == "codes" else
                           [1.0 if i == code else 0.0 for i in range(len(cat.states))])
                continue
            number = _number(cell)
            if number is None:
                problems.add(("text", name), f"{table.where(line)}: column {name!r} holds {cell!r}, not a number")
                bad = True
                continue
            row.append(number)
        when = None
        if source.timestamp_columns:
            cells = [fields[index[c]] for c in source.timestamp_columns]
            if any(c is None or not str(c).strip() for c in cells):
                for c, cell in zip(source.timestamp_columns, cells):
                    if cell is None or not str(cell).strip():
                        table.missing[c] += 1
                        gaps.append(c)
            elif isinstance(cells[0], datetime) and len(cells) == 1:
                when = _naive_utc(cells[0])
            else:
                text = " ".join(str(c).strip() for c in cells)
                try:
                    when = _naive_utc(parse_time(text, source.timestamp_format))
                except ValueError:
                    problems.add(("time",), f"{table.where(line)}: timestamp {text!r} is not a date and time"
                                            + (f" in the format {source.timestamp_format!r}"
                                               if source.timestamp_format else " (ISO 8601 or set timestamp_format)"))
                    bad = True
        label = None
        if source.label is not None:
            cell = fields[index[source.label.column]]
            if _is_missing(cell):
                table.missing[source.label.column] += 1
                gaps.append(source.label.column)
            else:
                label = 0 if any(_same_value(cell, v) for v in source.label.normal) else 1
        if bad:
            continue
        if gaps and source.missing == "refuse":
            for name in gaps:
                cell = fields[index[name]]
                shown = "empty" if cell is None or not str(cell).strip() else f"{cell!r}"
                problems.add(("missing", name), f"{table.where(line)}: column {name!r} is {shown} "
                                                "(data.source.missing is refuse; drop or ffill accept it)")
            continue
        if gaps and source.missing == "drop":
            table.dropped += 1
            continue
        if gaps and (when is None and source.timestamp_columns or label is None and source.label is not None):
            table.dropped += 1  # ffill carries sensor values, never a clock or a label
            continue
        if gaps:
            missing_at.append(len(values))
        values.append(row)
        lines.append(line)
        times.append(when)
        labels.append(label)
    if table.problems:
        return
    table.values = np.asarray(values, dtype=np.float64).reshape(len(values), len(out_columns))
    table.lines = np.asarray(lines, dtype=np.int64)
    if source.timestamp_columns:
        stamps = np.asarray([np.datetime64(t, "ms") for t in times], dtype="datetime64[ms]")
        step = np.diff(stamps).astype(np.int64)
        table.out_of_order, table.duplicates = int((step < 0).sum()), int((step == 0).sum())
        order = np.argsort(stamps, kind="stable")
        table.values, table.lines, table.timestamps = table.values[order], table.lines[order], stamps[order]
        labels = [labels[i] for i in order]
    if source.label is not None:
        table.labels = np.asarray(labels, dtype=np.int8)
    if missing_at:
        _forward_fill(table)
    table.values = table.values.astype(np.float32)


def _forward_fill(table: Table) -> None:
    """Carry each column's last value forward (in time order); leading gaps have nothing to carry: dropped."""
    v = table.values
    holes = np.isnan(v)
    table.filled = int(holes.any(axis=1).sum())
    last = np.where(~holes, np.arange(len(v))[:, None], -1)
    np.maximum.accumulate(last, axis=0, out=last)
    keep = (last >= 0).all(axis=1)
    v = np.take_along_axis(v, np.maximum(last, 0), axis=0)
    table.filled -= int((~keep).sum())
    table.dropped += int((~keep).sum())
    table.values, table.lines = v[keep], table.lines[keep]
    if table.timestamps is not None:
        table.timestamps = table.timestamps[keep]
    if table.labels is not None:
        table.labels = table.labels[keep]


def cut_runs(table: Table, gap_s: float | None) -> list[Run]:
    """One run per file, or one per stretch between clock jumps longer than ``gap_s``."""
    if len(table.values) == 0:
        return []
    bounds = [0, len(table.values)]
    if gap_s is not None and table.timestamps is not None and len(table.timestamps) > 1:
        step_ms = np.diff(table.timestamps).astype(np.int64)
        bounds = [0, *(np.flatnonzero(step_ms > gap_s * 1000) + 1).tolist(), len(table.values)]
    runs = []
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        runs.append(Run(name=table.name if len(bounds) == 2 else f"{table.name}#{k + 1}",
                        values=table.values[a:b],
                        timestamps=None if table.timestamps is None else table.timestamps[a:b],
                        labels=None if table.labels is None else table.labels[a:b]))
    return runs


@dataclass(frozen=True)
class TabularSource:
    """An edge node's files: its partition under ``root``, read as ``data.source`` says."""

    root: Path
    partition: list[str]
    data: DataSettings

    def files(self) -> list[Path]:
        return partition_files(Path(self.root), self.partition, self.data.source)

    def tables(self) -> list[Table]:
        root = Path(self.root)
        return [read_table(f, str(f.relative_to(root)) if f.is_relative_to(root) else str(f), self.data)
                for f in self.files()]

    def runs(self) -> list[Run]:
        return runs_of(self.tables(), self.data)


def runs_of(tables: list[Table], data: DataSettings, announce: bool = True) -> list[Run]:
    """The runs of read tables, or one DataError listing every problem of every file. Dropped and filled rows are
    logged (``announce``) — ``fedad data check`` reports them itself."""
    problems = [p for t in tables for p in t.problems]
    if problems:
        raise DataError("\n".join(problems))
    for t in tables if announce else []:
        if t.dropped or t.filled:
            log.warning("%s: %d row(s) dropped, %d filled forward (data.source.missing: %s)", t.name, t.dropped,
                        t.filled, data.source.missing)
    runs = [run for t in tables for run in cut_runs(t, data.source.run_gap_s)]
    if not runs:
        raise DataError(f"no rows left in {[t.name for t in tables]}")
    return runs
