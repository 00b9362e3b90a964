"""SKAB's files: where they are found and their verified download. Reading them is the tabular source's job
(services/data/tabular.py): SKAB is a configuration of it in config.yaml (``;``-separated, timestamp ``datetime``,
label ``anomaly``, the first 400 rows of each experiment file train).

SKAB (Skoltech Anomaly Benchmark) is a pump test-bed sampled once a second; each experiment file is one run of the
machine with one induced fault.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from services.atomic import write_bytes
from services.config import REPO_ROOT
from services.data.source import DataError

SKAB_COMMIT = "b2c0d46c2971dcbfe71e26087b6d231998bb91c2"
SKAB_URL = f"https://raw.githubusercontent.com/waico/SKAB/{SKAB_COMMIT}/data"
MANIFEST = Path(__file__).with_name("skab_files.sha256")


def _manifest() -> dict[str, str]:
    lines = [ln.split() for ln in MANIFEST.read_text().splitlines() if ln and not ln.startswith("#")]
    return {path: digest for digest, path in lines}


def find_skab_dir() -> Path:
    """SKAB's folder when data.source.dir is not set: ../shared/data/skab beside the checkout, else a verified
    download into the user's cache. (A data.source.dir the user names is used or refused, never replaced.)"""
    shared = REPO_ROOT.parent / "shared" / "data"
    if (shared / "skab").is_dir():
        return shared / "skab"
    return download_skab(_cache_dir()) / "skab"


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
                "Set data.source.dir (or FEDAD__DATA__SOURCE__DIR) to the folder holding SKAB's files, or place them "
                "at ../shared/data/skab."
            ) from None
        if _sha256(body) != digest:
            raise DataError(f"downloaded {url} has SHA-256 {_sha256(body)}, expected {digest}; not kept")
        write_bytes(dest, body)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
