"""SKAB reader: finds the data, reads experiment files into float32 arrays, splits train / held-out rows.

SKAB (Skoltech Anomaly Benchmark) is a pump test-bed sampled once a second; each experiment file is one run of the
machine with one induced fault. Its protocol trains on the first 400 rows of each file and tests on the rest.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.atomic import write_bytes
from services.config import REPO_ROOT
from services.data.source import DataError, Run

SKAB_COMMIT = "b2c0d46c2971dcbfe71e26087b6d231998bb91c2"
SKAB_URL = f"https://raw.githubusercontent.com/waico/SKAB/{SKAB_COMMIT}/data"
MANIFEST = Path(__file__).with_name("skab_files.sha256")
LABEL_COLUMN = "anomaly"


def _manifest() -> dict[str, str]:
    lines = [ln.split() for ln in MANIFEST.read_text().splitlines() if ln and not ln.startswith("#")]
    return {path: digest for digest, path in lines}


def find_data_dir(configured: Path | None = None) -> Path:
    """The folder holding ``skab/``: config, else $FEDAD_DATA_DIR, else ../shared/data, else a verified download.
    A folder the user named is used or refused, never silently replaced by another one."""
    named = configured  # data.dir, or FEDAD__DATA__DIR through the config loader
    if named:
        if (Path(named) / "skab").is_dir():
            return Path(named)
        raise DataError(f"no skab/ folder in the configured data dir {named}")
    shared = REPO_ROOT.parent / "shared" / "data"
    if (shared / "skab").is_dir():
        return shared
    return download_skab(_cache_dir())


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedad" / "data"


def download_skab(target: Path, base_url: str | None = None) -> Path:
    """Fetch SKAB's files once into ``target/skab``, each checked against its SHA-256 before it is kept."""
    base_url = base_url or os.environ.get("FEDAD_SKAB_URL", SKAB_URL)
    for rel, digest in _manifest().items():
        dest = target / "skab" / rel
        if dest.is_file() and _sha256(dest.read_bytes()) == digest:
            continue
        url = f"{base_url}/{rel}"
        print(f"downloading SKAB {rel} ...", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(
                f"SKAB data not found locally and the download of {url} failed ({exc}). "
                "Set FEDAD_DATA_DIR to a folder containing skab/, or place it at ../shared/data/skab."
            ) from None
        if _sha256(body) != digest:
            raise DataError(f"downloaded {url} has SHA-256 {_sha256(body)}, expected {digest}; not kept")
        write_bytes(dest, body)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path)))


def read_experiment(path: Path, features: list[str], name: str | None = None) -> Run:
    """Read one ;-separated SKAB CSV; rows in file order, columns in ``features`` order, labels if it has them."""
    try:
        with open(path) as f:
            header = f.readline().rstrip("\n").split(";")
            missing = [c for c in features if c not in header]
            if missing:
                raise DataError(f"{path}: no column(s) {missing}; the file has {header}")
            columns = [header.index(c) for c in features]
            label = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
            usecols = columns + ([label] if label is not None else [])
            table = np.loadtxt(f, delimiter=";", usecols=usecols, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    values = table[:, : len(columns)].astype(np.float32)
    labels = table[:, -1].astype(np.int8) if label is not None else None
    return Run(name=name or Path(path).name, values=values, labels=labels)


@dataclass(frozen=True)
class SkabSource:
    """An edge node's SKAB folders and/or files (its partition), in natural order; each file is one run."""

    data_dir: Path
    partition: list[str]
    features: list[str]

    def runs(self) -> list[Run]:
        root = Path(self.data_dir) / "skab"
        files: list[Path] = []
        for entry in self.partition:
            path = root / entry
            if path.is_dir():
                files.extend(sorted(path.glob("*.csv"), key=_natural_key))
            elif path.is_file():
                files.append(path)
            else:
                raise DataError(f"partition entry {entry!r}: no such folder or file under {root}")
        if not files:
            raise DataError(f"partition {self.partition} holds no CSV files under {root}")
        return [read_experiment(f, self.features, name=str(f.relative_to(root))) for f in files]


def load_partition(data_dir: Path, partition: list[str], features: list[str]) -> list[Run]:
    return SkabSource(Path(data_dir), partition, features).runs()
