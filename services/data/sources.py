"""From config.yaml's ``data`` section to an edge node's data: which source reads it, which rows train, and the
node's data as its partition grows (new files are read at the next look)."""

from __future__ import annotations

import threading
from pathlib import Path

from services.config import DataSettings, Settings, WorkerSettings
from services.data.node import NodeData
from services.data.selection import training_selection
from services.data.source import DataError, Source
from services.data.windows import Preprocessing


def data_root(data: DataSettings) -> Path:
    """The folder the workers' partitions are relative to: data.source.dir, or the download's folder."""
    if data.source.dir is not None:
        return Path(data.source.dir)
    if data.source.download == "skab":
        from services.data.skab import find_skab_dir

        return find_skab_dir()
    raise DataError("data.source.dir is not set: name the folder holding the workers' partitions")


def open_source(settings: Settings, worker: WorkerSettings) -> Source:
    data = settings.data_for(worker)
    if data.source.kind == "synthetic":
        from services.data.synthetic import synthetic_source

        return synthetic_source(settings, worker)
    if data.source.kind == "files":
        from services.data.split import split_for
        from services.data.tabular import TabularSource

        return split_for(TabularSource(data_root(data), worker.partition, data), settings, worker)
    raise DataError(f"data.source.kind {data.source.kind!r} has no reader")


def load_node(settings: Settings, worker: WorkerSettings) -> NodeData:
    """The node's runs read exactly as training will, with its training rows chosen."""
    data = settings.data_for(worker)
    return NodeData(open_source(settings, worker).runs(), Preprocessing.from_settings(settings.data),
                    training_selection(data.training))


def partition_fingerprint(settings: Settings, worker: WorkerSettings, root: Path | None = None) -> tuple:
    """What a reload would read differently: name, size and modification time of every partition file (nothing
    for generated data, which never grows). Cheap: a listing and a stat per file, no file is opened. ``root``:
    the data folder if known (finding SKAB's download checks every file's digest)."""
    data = settings.data_for(worker)
    if data.source.kind != "files":
        return ()
    from services.data.tabular import partition_files

    files = partition_files(root or data_root(data), worker.partition, data.source)
    return tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])


class NodeFeed:
    """An edge node's data as its partition grows: ``current`` reads the source again only when a file appeared,
    changed or went; otherwise it returns the data read last. Safe to call from several threads."""

    def __init__(self, settings: Settings, worker: WorkerSettings):
        self.settings = settings
        self.worker = worker
        self._lock = threading.Lock()
        self._fingerprint: tuple | None = None
        self._node: NodeData | None = None
        self._root: Path | None = None
        self._failed: tuple[tuple, DataError] | None = None  # the files that failed to read last, and why
        self.reloads = 0  # times the source was read again after the first

    def latest(self) -> NodeData | None:
        """The data read last (None before the first read), without looking at the files again."""
        return self._node

    def current(self) -> NodeData:
        """The node's data as its files are now; a DataError (a file half copied, a bad row) leaves the previous
        data in place for the caller to keep using."""
        with self._lock:
            data = self.settings.data_for(self.worker)
            if self._root is None and data.source.kind == "files":
                self._root = data_root(data)
            fingerprint = partition_fingerprint(self.settings, self.worker, self._root)
            if self._node is None or fingerprint != self._fingerprint:
                if self._failed is not None and self._failed[0] == fingerprint:
                    raise self._failed[1]  # the same files again: not read again until one changes
                try:
                    node = load_node(self.settings, self.worker)
                except DataError as exc:
                    self._failed = (fingerprint, exc)
                    raise
                self.reloads += self._node is not None
                self._node, self._fingerprint, self._failed = node, fingerprint, None
            return self._node
