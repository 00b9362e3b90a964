"""From config.yaml's ``data`` section to an edge node's data: which source reads it, which rows train."""

from __future__ import annotations

from services.config import Settings, WorkerSettings
from services.data.node import NodeData
from services.data.selection import FirstRows, TrainingSelection
from services.data.source import Source
from services.data.windows import Preprocessing


def open_source(settings: Settings, worker: WorkerSettings) -> Source:
    """The worker's source: the synthetic fleet's device, or its files (its part of them under ``data.split``)."""
    from services.data.split import split_for
    from services.data.synthetic import synthetic_source

    if settings.data_for(worker).source.kind == "synthetic":
        return synthetic_source(settings, worker)
    return split_for(_files_source(settings, worker), settings, worker)


def _files_source(settings: Settings, worker: WorkerSettings) -> Source:
    from services.data.skab import SkabSource, find_data_dir

    named = settings.data.source.dir
    return SkabSource(named.parent if named else find_data_dir(), worker.partition, settings.data.features)


def training_selection(settings: Settings) -> TrainingSelection:
    return FirstRows(settings.data.train_rows)


def load_node(settings: Settings, worker: WorkerSettings) -> NodeData:
    """The node's runs read exactly as training will, with its training rows chosen."""
    return NodeData(open_source(settings, worker).runs(), Preprocessing.from_settings(settings.data),
                    training_selection(settings))
