"""From config.yaml's ``data`` section to an edge node's data: which source reads it, which rows train."""

from __future__ import annotations

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
