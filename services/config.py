"""Typed settings loaded from config.yaml, with single values overridable by environment variables.

Why one loader for both services: the aggregator and every worker must agree on the model shape, the data columns
and the round rules, so they read the same file. Containers override single values with
``FEDAD__SECTION__KEY=value``, parsed as YAML; list items by index or, for workers, by id
(``FEDAD__WORKERS__0__TOKEN`` or ``FEDAD__WORKERS__VALVE1__TOKEN``), so a container only needs to know its own id.
That is the one override mechanism; ``FEDAD_CONFIG`` only picks the file.

Why the code defaults equal the shipped config.yaml's values (tests/test_config.py checks it): a key left out of a
config then means what the shipped file says, not a second, older opinion. What only the data can tell (its
columns, the channels worth watching) and the dense layer sizes have no default: the file must say them.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"
ENV_PREFIX = "FEDAD__"


class ConfigError(ValueError):
    """A config value is missing or wrong; the message names the key."""


def hash_token(token: str) -> str:
    """What ``token_sha256`` holds: the SHA-256 of the token's UTF-8 bytes, in hex. Defined here because the loader
    checks a worker's token against its digest; services.security.tokens uses the same function."""
    return hashlib.sha256(token.encode()).hexdigest()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelSettings(_Section):
    """The column that says whether a row is anomalous, and which of its values mean normal. Labels serve the
    evaluation (and the ``labelled_normal`` training policy); they are never a model input."""

    column: str = Field(min_length=1)
    normal: list[str | int | float] = Field([0], min_length=1)


class CategoricalSettings(_Section):
    """A column of named states (``on``/``off``, ``open``/``closed``): ``codes`` gives one column holding the
    state's position in ``levels``; ``onehot`` gives one 0/1 column per state, named ``<column>=<state>``.

    ``levels`` lists the states, each written in the files as its name, or maps each state to the spellings the
    files use for it (``{"off": ["off", "0", "false"], "on": ["on", "1", "true"]}``; a state's name is always one
    of its spellings), so one export's ``0``, ``false  `` and ``off`` are one state. Spaces around a cell never
    count; ``ignore_case`` compares spellings case-insensitively, ``ignore_spaces`` without any whitespace
    (``stand by`` = ``standby``). Any other spelling is refused with its ``file:line``."""

    levels: list[str] | dict[str, list[str]] = Field(min_length=1)
    encoding: Literal["codes", "onehot"] = "codes"
    ignore_case: bool = False
    ignore_spaces: bool = False

    @field_validator("levels", mode="before")
    @classmethod
    def _levels_are_text(cls, levels):
        def text(value):
            if isinstance(value, bool):  # YAML 1.1 reads unquoted on/off/yes/no/true/false as booleans
                raise ValueError(f"YAML read a state or spelling as the boolean {value}: quote it (\"on\", \"off\", "
                                 "\"true\" ...) so it stays the text the files hold")
            return str(value).strip()

        if isinstance(levels, list):
            return [text(v) for v in levels]
        if isinstance(levels, dict):
            return {text(state): [text(v) for v in (spellings if isinstance(spellings, list) else [spellings])]
                    for state, spellings in levels.items()}
        return levels

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalSettings:
        if isinstance(self.levels, list) and len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels repeat a value: {self.levels}")
        owner: dict[str, str] = {}
        for state, spellings in self.spellings().items():
            for spelling in spellings:
                key = self.normalise(spelling)
                if not key:
                    raise ValueError(f"levels: state {state!r} has an empty spelling")
                if owner.setdefault(key, state) != state:
                    raise ValueError(f"levels: the spelling {spelling!r} names two states, {owner[key]!r} and "
                                     f"{state!r}" + (" (compared ignoring case/spaces)" if self._loose else ""))
        return self

    @property
    def states(self) -> list[str]:
        """The states in code order."""
        return list(self.levels)

    @property
    def _loose(self) -> bool:
        return self.ignore_case or self.ignore_spaces

    def spellings(self) -> dict[str, list[str]]:
        """Every state with the spellings that mean it, its own name first."""
        if isinstance(self.levels, list):
            return {state: [state] for state in self.levels}
        return {state: [state, *(s for s in spellings if s != state)] for state, spellings in self.levels.items()}

    def normalise(self, cell: str) -> str:
        """A cell as spellings are compared: stripped, then without whitespace / case-folded as configured."""
        text = cell.strip()
        if self.ignore_spaces:
            text = "".join(text.split())
        return text.casefold() if self.ignore_case else text

    def codes(self) -> dict[str, int]:
        """Normalised spelling → the state's code (its position in ``levels``)."""
        return {self.normalise(spelling): code for code, spellings in enumerate(self.spellings().values())
                for spelling in spellings}

    def describe(self) -> str:
        """The states (and spellings) as an error message lists them."""
        if isinstance(self.levels, list) and not self._loose:
            return f"one of its levels {self.levels}"
        rule = ", ".join(w for w, on in (("case", self.ignore_case), ("spaces", self.ignore_spaces)) if on)
        return f"a spelling of its levels {self.spellings()}" + (f" (ignoring {rule})" if rule else "")


class SyntheticSettings(_Section):
    """The generated fleet of ``source.kind: synthetic`` (services/data/synthetic.py): worker k is device k, with one
    sensor per feature name; the first ``normal_rows`` rows of each device are anomaly-free, then ``anomalies``
    labelled events of the given kinds."""

    rows: int = Field(5000, ge=100)
    normal_rows: int = Field(1500, ge=2)
    anomalies: int = Field(10, ge=0)
    kinds: list[Literal["spike", "level_shift", "drift", "stuck", "noise_burst"]] = Field(
        ["spike", "level_shift", "drift", "stuck", "noise_burst"], min_length=1)
    interval_s: float = Field(1.0, gt=0)
    period_rows: int = Field(600, ge=2)
    seed: int = Field(0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _room(self) -> SyntheticSettings:
        if self.normal_rows >= self.rows:
            raise ValueError(f"normal_rows ({self.normal_rows}) must be below rows ({self.rows})")
        return self


class SplitSettings(_Section):
    """One data set shared out across the workers that name the same partition (services/data/split.py): at random,
    or skewed per value of ``column`` by Dirichlet(``alpha``) shares; a worker's part is its position among them."""

    method: Literal["random", "dirichlet"] = "random"
    column: str | None = None
    alpha: float = Field(0.5, gt=0)
    seed: int = Field(0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _column_given(self) -> SplitSettings:
        if self.method == "dirichlet" and not self.column:
            raise ValueError("method dirichlet needs column: the feature or label column whose mix differs")
        return self


class SourceSettings(_Section):
    """Where an edge node's rows come from and how its files are read (services/data/tabular.py), or the
    synthetic fleet's parameters (services/data/synthetic.py)."""

    kind: Literal["files", "synthetic"] = "files"
    synthetic: SyntheticSettings = SyntheticSettings()
    dir: Path | None = None
    format: Literal["auto", "csv", "parquet"] = "auto"
    delimiter: str | None = Field(None, min_length=1, max_length=1)
    timestamp: str | list[str] | None = None
    timestamp_format: str | None = None
    run_gap_s: float | None = Field(None, gt=0)
    label: LabelSettings | None = None
    categorical: dict[str, CategoricalSettings] = {}
    missing: Literal["refuse", "drop", "ffill"] = "refuse"
    download: Literal["skab"] | None = None

    @field_validator("timestamp")
    @classmethod
    def _one_or_date_time(cls, value):
        if isinstance(value, list) and len(value) != 2:
            raise ValueError("timestamp is one column name, or [date column, time column]")
        return value

    @property
    def timestamp_columns(self) -> list[str]:
        if self.timestamp is None:
            return []
        return [self.timestamp] if isinstance(self.timestamp, str) else list(self.timestamp)


class TrainingSettings(_Section):
    """Which rows of each run train the detector and calibrate its threshold; the rest is held out
    (services/data/selection.py)."""

    policy: Literal["first_rows", "before", "labelled_normal", "all"] = "first_rows"
    rows: int = Field(400, gt=0)
    count: Literal["normal", "all"] = "normal"  # first_rows in a labelled run: count (and train) normal rows only
    before: datetime | None = None
    share: float = Field(1.0, gt=0, le=1)  # labelled_normal: this share of each run's normal rows ...
    order: Literal["random", "file"] = "random"  # ... drawn by seed, or the first ones in the run's order
    seed: int = Field(0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _before_given(self) -> TrainingSettings:
        if self.policy == "before" and self.before is None:
            raise ValueError("policy before needs a timestamp in before (e.g. 2024-05-01 00:00:00)")
        return self


class DataSettings(_Section):
    source: SourceSettings
    training: TrainingSettings = TrainingSettings()
    split: SplitSettings | None = None
    features: list[str] = Field(min_length=1)
    window: int = Field(20, ge=1, le=256)
    window_stats: list[Literal["mean", "std", "slope"]] = ["mean", "std", "slope"]
    baseline: Literal["run", "node", "federation"] = "run"
    scaling: Literal["standard", "minmax"] = "standard"
    model_features: list[str] | None = None

    @model_validator(mode="after")
    def _model_inputs(self) -> DataSettings:
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features repeat a column: {self.features}")
        if len(set(self.window_stats)) != len(self.window_stats):
            raise ValueError(f"window_stats repeats a statistic: {self.window_stats}")
        if self.model_features is not None:
            unknown = [f for f in self.model_features if f not in self.features]
            if unknown or not self.model_features or len(set(self.model_features)) != len(self.model_features):
                raise ValueError(f"model_features must be distinct names from features; not in features: {unknown}")
        source = self.source
        taken = {c: "the timestamp" for c in source.timestamp_columns}
        if source.label is not None:
            taken[source.label.column] = "the label"
        clash = [f"{f} is {taken[f]} column" for f in self.features if f in taken]
        if clash:
            raise ValueError(f"features must be model inputs only: {'; '.join(clash)}")
        unused = [c for c in source.categorical if c not in self.features]
        if unused:
            raise ValueError(f"categorical columns {unused} are not in features")
        if self.split is not None and self.split.column is not None and self.split.column not in self.features \
                and (source.label is None or self.split.column != source.label.column):
            raise ValueError(f"split.column {self.split.column!r} is neither a feature nor the label column")
        if self.training.policy == "labelled_normal" and source.label is None and source.kind != "synthetic":
            raise ValueError("training.policy labelled_normal needs source.label")
        if source.run_gap_s is not None and not source.timestamp_columns:
            raise ValueError("source.run_gap_s cuts runs where the clock jumps: it needs source.timestamp")
        if self.training.policy == "before" and not source.timestamp_columns:
            raise ValueError("training.policy before needs source.timestamp")
        return self

    @property
    def train_rows(self) -> int:
        return self.training.rows

    def expand(self, names: list[str]) -> list[str]:
        """Value columns of the named features: a one-hot categorical feature becomes ``<column>=<level>`` each."""
        out: list[str] = []
        for name in names:
            cat = self.source.categorical.get(name)
            if cat is not None and cat.encoding == "onehot":
                out.extend(f"{name}={state}" for state in cat.states)
            else:
                out.append(name)
        return out

    @property
    def columns(self) -> list[str]:
        """The columns of every row the sources yield and POST /detect takes, in order."""
        return self.expand(self.features)

    @property
    def model_columns(self) -> list[str]:
        """The columns the model sees (``model_features`` expanded, or all)."""
        return self.expand(self.model_features or self.features)


MODEL_KINDS = ("dense", "conv1d", "lstm")


def default_hidden(input_width: int) -> list[int]:
    """The dense autoencoder's hidden layers when config.yaml names none: [outer, bottleneck, outer], the bottleneck
    a quarter of the input width, at least 2, always narrower than the input (a bottleneck as wide as the input can
    learn to copy it and reconstruct a fault as well as a normal row); outer layers twice the bottleneck, at least 8.
    Measured on generated devices the shipped data sets do not resemble (services/evaluation/unseen.py;
    docs/quality.md "Model shape"), then checked on the shipped ones. An input of width 1 has no narrower bottleneck:
    ``Settings`` refuses it for the dense kind."""
    bottleneck = min(input_width - 1, max(2, input_width // 4))
    outer = max(8, 2 * bottleneck)
    return [outer, bottleneck, outer]
RAW_WINDOW_KINDS = ("conv1d", "lstm")  # read the window's rows themselves, not statistics of them
INT8_REFUSED = {  # kinds whose served int8 model does not hold fp32's accuracy, or is not int8 (docs/quality.md)
    "lstm": "onnxruntime's static int8 quantisation leaves the LSTM operators in float (it quantises only the "
            "output layer), so the int8 model is not an int8 LSTM",
}


class Conv1dSettings(_Section):
    """Size of the 1-D convolutional autoencoder: channels of each stride-2 encoder layer, and the kernel length."""

    channels: list[int] = Field([16, 1], min_length=1)  # a narrow last layer: docs/quality.md "Model kinds"
    kernel: int = Field(5, ge=1, le=63)

    @field_validator("channels")
    @classmethod
    def _positive(cls, channels: list[int]) -> list[int]:
        if any(c < 1 for c in channels):
            raise ValueError("every channel count must be >= 1")
        return channels

    @field_validator("kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError("the kernel length must be odd (the padding keeps a window's rows centred)")
        return kernel


class LstmSettings(_Section):
    """Size of the LSTM autoencoder: the state size of its encoder and decoder."""

    hidden: int = Field(1, ge=1, le=1024)  # as narrow as it gets: docs/quality.md "Model kinds"


class ModelSettings(_Section):
    kind: Literal["dense", "conv1d", "lstm"] = "dense"
    hidden: list[int] | None = Field(None, min_length=1)  # dense: hidden layer sizes; null: from the input width
    conv1d: Conv1dSettings = Conv1dSettings()
    lstm: LstmSettings = LstmSettings()
    score: Literal["error", "error_and_t2"] = "error_and_t2"  # services/model/scoring.py
    local_epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.005, gt=0)
    seed: int = Field(0, ge=0, lt=2**32)  # initial weights; torch and numpy's MT19937 both take 32 bits

    _derived: bool = PrivateAttr(False)  # hidden came from the input width: a rule, dumped as null

    @field_validator("hidden")
    @classmethod
    def _positive(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None and any(s < 1 for s in sizes):
            raise ValueError("every hidden layer size must be >= 1")
        return sizes

    @field_serializer("hidden")
    def _rule_stays_a_rule(self, hidden: list[int] | None) -> list[int] | None:
        """A derived shape is dumped as null, so a copy validated again with other data derives its own."""
        return None if self._derived else hidden

    @property
    def hidden_sizes(self) -> list[int]:
        """The dense layer sizes in use (``Settings`` fills ``hidden`` in from the input width when it is null)."""
        if self.hidden is None:
            raise ValueError("model.hidden is derived from the input width when the whole config is validated")
        return self.hidden

    def shape_refusals(self, input_width: int) -> list[str]:
        """A dense bottleneck that could learn the identity, with the fix."""
        if self.kind == "dense" and input_width < 2:
            return [f"the model input is {input_width} value wide (data.model_features × window statistics, or the "
                    "window's rows): a dense autoencoder needs a bottleneck narrower than its input, so give it a "
                    "window with statistics (e.g. data.window: 12, data.window_stats: [mean, std, slope]) or more "
                    "channels"]
        if self.kind != "dense" or self.hidden is None or self._derived or min(self.hidden) < input_width:
            return []
        return [f"model.hidden {self.hidden}: the narrowest layer ({min(self.hidden)}) must be narrower than the "
                f"model's input width ({input_width}), or the autoencoder can learn to copy its input and "
                f"reconstruct faults as well as normal rows; remove model.hidden to take the default "
                f"{default_hidden(input_width)} (derived from the input width), or set a narrower one"]

    def refusals(self, data: DataSettings, serving: ServingSettings) -> list[str]:
        """Why this model cannot run on ``data`` or be served as ``serving.model``, each naming its keys."""
        problems = []
        if self.kind in RAW_WINDOW_KINDS and data.window_stats:
            problems.append(f"model.kind {self.kind} reads the window's raw rows: data.window_stats must be [] "
                            f"(got {data.window_stats})")
        if self.kind == "conv1d" and data.window < self.conv1d.kernel:
            problems.append(f"data.window ({data.window}) is shorter than model.conv1d.kernel "
                            f"({self.conv1d.kernel}): the convolution needs a window at least one kernel long")
        if serving.model == "int8" and self.kind in INT8_REFUSED:  # auto serves such kinds fp32
            problems.append(f"serving.model int8 cannot serve model.kind {self.kind}: {INT8_REFUSED[self.kind]}; "
                            "set serving.model: fp32")
        return problems


class ContinualSettings(_Section):
    """After the first ``rounds`` the federation stays open: a round opens on a schedule, on an admin request, on
    enough new data at enough workers, or on a drift report (README: The life of a model)."""

    enabled: bool = True
    every_s: float | None = Field(None, gt=0)  # schedule: open a round this often (null: no schedule)
    min_new_rows: int | None = Field(2000, ge=1)  # new data: a worker with this many rows not yet trained on ...
    min_workers_with_new_data: int = Field(2, ge=1)  # ... at this many workers opens a round (null rows: off)
    on_drift: bool = True  # a worker's drift report opens a round
    skip_without_new_data: bool = True  # a scheduled round opens only if some worker has new rows


class FederationSettings(_Section):
    rounds: int = Field(10, ge=1)  # the first campaign; continual rounds follow (federation.continual)
    min_workers: int = Field(3, ge=1)
    quorum: int = Field(2, ge=1)
    round_deadline_s: float = Field(120, gt=0)
    strategy: Literal["fedavg", "median", "trimmed_mean"] = "fedavg"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5)
    clip_norm: float | None = Field(None, gt=0)
    fedprox_mu: float = Field(0.0, ge=0)
    continual: ContinualSettings = ContinualSettings()
    # A fleet (README: Fleets): who trains each round, and rounds that never wait for a straggler.
    mode: Literal["sync", "async"] = "sync"  # async: buffered asynchronous aggregation (FedBuff)
    clients_per_round: int | float | None = None  # null: every live node | a count (10) | a share (0.1) of them
    sample_seed: int = Field(0, ge=0, lt=2**32)  # the sample of round r is drawn by (sample_seed, r)
    buffer_size: int = Field(10, ge=1)  # async: a new global model every buffer_size updates
    max_staleness: int = Field(10, ge=0)  # async: an update trained on a model this many versions old is the oldest
    staleness_exponent: float = Field(0.5, ge=0)  # async: an update s versions old weighs (1 + s) ** -exponent

    @field_validator("clients_per_round")
    @classmethod
    def _count_or_share(cls, value):
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("a share of the live nodes is in (0, 1], a count a whole number >= 1")
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError("a count of nodes is at least 1")
        return value

    @model_validator(mode="after")
    def _quorum_fits(self) -> FederationSettings:
        if self.quorum > self.min_workers:
            raise ValueError(f"quorum ({self.quorum}) must not exceed min_workers ({self.min_workers})")
        return self

    def sample_size(self, live: int) -> int | None:
        """How many of ``live`` nodes train a round: None for all of them."""
        if self.clients_per_round is None:
            return None
        if isinstance(self.clients_per_round, float):
            return min(live, max(1, math.ceil(self.clients_per_round * live)))
        return min(live, self.clients_per_round)


class ThresholdSettings(_Section):
    rule: Literal["quantile", "mean_std"] = "quantile"
    quantile: float = Field(0.99, gt=0, lt=1)
    k: float = Field(3.0, ge=0)
    factor: float = Field(1.2, gt=0)


class PrivacySettings(_Section):
    """Differential privacy: each update's change to the global model is clipped to ``clip_norm`` (L2) and Gaussian
    noise of std ``noise_multiplier`` × ``clip_norm`` (client side) or × ``clip_norm`` × the largest weight share
    (server side, on the FedAvg aggregate) is added. ``noise_multiplier`` 0 turns DP off."""

    noise_multiplier: float = Field(0.0, ge=0)
    clip_norm: float = Field(1.0, gt=0)
    side: Literal["server", "client"] = "server"
    delta: float = Field(1e-5, gt=0, lt=1)

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


class TlsSettings(_Section):
    """Mutual TLS between workers and the aggregator; ``make certs`` writes the files this expects in ``dir``:
    ca.crt, aggregator.crt/.key and <worker id>.crt/.key."""

    enabled: bool = False
    dir: Path = Path("certs")
    require_client_cert: bool = True

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, node: str) -> Path:
        return self.dir / f"{node}.crt"

    def key(self, node: str) -> Path:
        return self.dir / f"{node}.key"


class ServingSettings(_Section):
    model: Literal["auto", "int8", "fp32"] = "auto"  # auto: int8 where it ranks as fp32 does (model/precision.py)
    max_batch_rows: int = Field(10000, ge=1)
    # stream rows that arrive within this long of each other (stream /detect requests, device data) are scored in one
    # model run; 0: each as it comes (services/worker/batching.py)
    batch_wait_ms: float = Field(1.0, ge=0, le=10)


class StreamSettings(_Section):
    """Per-stream state for /detect requests that name a ``stream``: at most ``max_streams`` streams are held (the
    least recently used is evicted beyond that); each holds its last ``window - 1`` raw rows and its reference."""

    max_streams: int = Field(1000, ge=1, le=1_000_000)


class MqttTopicSettings(_Section):
    """One subscription: an MQTT topic filter (``{worker}`` becomes the worker id; its first ``+`` level names the
    device, a second the property) and the message format on it (services/worker/ingest/messages.py)."""

    topic: str = Field(min_length=1)
    format: Literal["rows", "kubeedge_data", "kubeedge_twin", "property"]


class MqttSettings(_Section):
    """The node's MQTT broker (KubeEdge runs Mosquitto on the edge node at 127.0.0.1:1883): device data in, alarm
    events out."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None  # null: fedad-<worker id>
    qos: int = Field(1, ge=0, le=2)
    keepalive_s: int = Field(30, ge=5, le=3600)
    topics: list[MqttTopicSettings] = [
        MqttTopicSettings(topic="$ke/events/device/+/data/update", format="kubeedge_data"),
        MqttTopicSettings(topic="$hw/events/device/+/twin/update", format="kubeedge_twin"),
        MqttTopicSettings(topic="fedad/{worker}/rows/+", format="rows"),
        MqttTopicSettings(topic="fedad/{worker}/properties/+/+", format="property")]


class IngestSettings(_Section):
    """Device data over MQTT and the mapper's HTTP push, assembled into rows per device and scored as its stream."""

    mqtt: MqttSettings = MqttSettings()
    tolerance_s: float = Field(0.5, ge=0)  # readings of one device this close in time make one row
    max_wait_s: float = Field(5.0, gt=0)  # an incomplete row waits this long for its missing properties ...
    missing: Literal["drop", "carry_forward"] = "drop"  # ... then is dropped (counted) or filled with the last values
    max_devices: int = Field(1000, ge=1, le=1_000_000)  # devices assembled at once (least recently used out)
    baseline_rows: int | None = Field(None, ge=2)  # data.baseline run: a device's first rows set its scaling (null:
    # data.train_rows)
    queue_messages: int = Field(10000, ge=1)  # readings waiting for the ingestion thread; beyond: refused, counted


class AlarmSettings(_Section):
    """Debounced alarms per stream (services/worker/alarms.py), published to ``topic`` and an optional webhook."""

    open_after: int = Field(3, ge=1)  # consecutive anomalous rows that open an alarm
    clear_after: int = Field(10, ge=1)  # consecutive normal rows that clear it
    topic: str = Field("fedad/{worker}/alarms", min_length=1)
    webhook: str | None = Field(None, pattern=r"^https?://")
    outbox_max: int = Field(10000, ge=1)  # undelivered events kept on disk; beyond, the oldest is dropped (counted)
    recent: int = Field(50, ge=0, le=10_000)  # cleared alarms listed in /v1/status


class TwinSettings(_Section):
    """The verdict as reported twin properties of each device on KubeEdge (services/worker/twin.py)."""

    enabled: bool = False  # needs ingest.mqtt.enabled: EdgeCore reads twin updates from the node's broker
    every_s: float = Field(30.0, gt=0)  # a device's score at most this often; alarm changes at once


class LoggingSettings(_Section):
    """Both services: ``text`` lines or one JSON object per line, each with the worker id and round."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value


class DashboardSettings(_Section):
    """The live pages (services/observability): how often each worker reports its /detect counts to the aggregator
    (0: never) and how many recent scores a worker keeps for its own page."""

    telemetry_interval_s: float = Field(5.0, ge=0, le=3600)
    recent_scores: int = Field(500, ge=10, le=100_000)


class UpstreamSettings(_Section):
    """A site aggregator's aggregator (``aggregator.role: site``): where it is, and who this site is there."""

    url: str | None = Field(None, pattern=r"^https?://")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # the site's worker id upstream
    token: str | None = Field(None, min_length=8)  # its token there (a workers entry or an enrolled identity)


class AggregatorSettings(_Section):
    """Where the aggregator listens and where workers reach it; ``port`` and ``url`` follow ``port_base`` unless
    given. ``role: site`` makes it a site aggregator: an aggregator to its node group, one worker upstream."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    url: str = "http://127.0.0.1:8080"
    state_dir: Path = Path("state/aggregator")
    role: Literal["root", "site"] = "root"
    upstream: UpstreamSettings = UpstreamSettings()

    @model_validator(mode="after")
    def _site_has_upstream(self) -> AggregatorSettings:
        if self.role == "site":
            missing = [k for k in ("url", "id", "token") if getattr(self.upstream, k) is None]
            if missing:
                raise ValueError(f"role site needs upstream.{', upstream.'.join(missing)}: the aggregator above "
                                 "and this site's identity there")
        return self


class WorkerSettings(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    partition: list[str] = Field(min_length=1)  # folders, globs or files relative to data.source.dir
    source: dict[str, Any] | None = None  # this node's overrides of data.source keys (its own dir, delimiter ...)
    training: dict[str, Any] | None = None  # this node's overrides of data.training keys
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)  # left out: port_base + the worker's position (1, 2, ...)
    state_dir: Path
    token: str | None = Field(None, min_length=8)
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    mode: Literal["train", "detect_only"] = "train"  # detect_only: serves the federated model, never trains

    @field_validator("token", "token_sha256", mode="before")
    @classmethod
    def _digits_are_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # YAML reads 1234 as int

    @model_validator(mode="after")
    def _token_given(self) -> WorkerSettings:
        if self.token is None and self.token_sha256 is None:
            raise ValueError("give token (the worker needs it) or token_sha256 (enough for the aggregator)")
        if self.token is not None and self.token_sha256 is not None:
            if hash_token(self.token) != self.token_sha256:
                raise ValueError("token_sha256 is not the SHA-256 of token")
        return self


class EnrolledNodeSettings(_Section):
    """What every enrolled node runs with (a ``workers`` entry without id and token): ``{id}`` in ``state_dir`` and
    ``partition`` becomes the node's id, so one config serves the whole fleet."""

    partition: list[str] = Field(["{id}"], min_length=1)
    source: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=1, le=65535)
    state_dir: Path = Path("state/{id}")
    mode: Literal["train", "detect_only"] = "train"


class _HashedToken(_Section):
    """A shared secret given as ``token`` or, where only checking it, as its ``token_sha256``: both may be given if
    they agree; ``digest`` is the SHA-256 either way (None: no token configured)."""

    token: str | None = Field(None, min_length=8)
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("token", "token_sha256", mode="before")
    @classmethod
    def _digits_are_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.token is not None and self.token_sha256 is not None and hash_token(self.token) != self.token_sha256:
            raise ValueError("token_sha256 is not the SHA-256 of token")
        return self

    @property
    def digest(self) -> str | None:
        return self.token_sha256 or (hash_token(self.token) if self.token else None)


class EnrollmentSettings(_HashedToken):
    """Nodes that are not in ``workers`` join with a fleet credential and receive their own identity (README:
    Fleets): the bootstrap ``token`` (the aggregator needs only ``token_sha256``), or, with ``certificates``, a
    client certificate from the federation's CA whose common name is the node's id. Neither: no enrollment."""

    token: str | None = Field(None, min_length=16)
    certificates: bool = False
    node: EnrolledNodeSettings = EnrolledNodeSettings()

    @property
    def enabled(self) -> bool:
        return self.digest is not None or self.certificates


class GateSettings(_Section):
    """The worker's check of a new model against the one it serves, on its held-out rows (README: The life of a
    model): the new one is served only if no figure is worse by more than its bound."""

    enabled: bool = True
    max_f1_drop: float = Field(0.05, ge=0, le=1)  # labelled held-out rows: F1 may fall at most this much
    max_alarm_rate_increase: float = Field(2.0, ge=0, le=100)  # unlabelled: percentage points of held-out alarms
    max_error_ratio: float = Field(1.5, gt=1)  # mean score of held-out normal rows, new model / served model


class ModelVersionSettings(_Section):
    keep: int = Field(5, ge=2, le=100)  # installed models each worker keeps (rollback targets); older ones retire
    gate: GateSettings = GateSettings()


class LiveBufferSettings(_Section):
    """Live rows kept for the next rounds' training: only rows the served model scored normal, away from alarms."""

    enabled: bool = True
    max_rows: int = Field(20000, ge=0)  # per worker, oldest out first
    margin_rows: int = Field(30, ge=0)  # rows just before an alarm opens and just after it clears are not kept


class DriftSettings(_Section):
    """Watches the scores of normal-scored live rows per stream (README: Drift)."""

    enabled: bool = True
    method: Literal["page_hinkley"] = "page_hinkley"  # services/worker/drift.py says why no other
    min_rows: int = Field(200, ge=10)  # rows a stream's detector sees before it may signal
    page_hinkley_delta: float = Field(0.005, ge=0)  # magnitude of change tolerated, in units of the threshold
    page_hinkley_threshold: float = Field(50.0, gt=0)  # lambda, in units of the threshold
    action: Literal["recalibrate", "retrain", "both", "none"] = "both"
    recalibrate_rows: int = Field(1000, ge=50)  # recent normal rows the new threshold is computed on


class AdminSettings(_HashedToken):
    """The operator's token for control requests (start a round, roll back, pin): never a worker's token. Without
    one (``digest`` None) every control request is refused."""


PORT_BASE = 8080


def ports_from_base(raw: dict) -> dict:
    """The raw config with the ports left out (or null) filled from ``port_base``: the aggregator listens on the base,
    the k-th worker on base + k, and workers reach the aggregator at its host and port (127.0.0.1 when it listens on
    every address; https with tls). Given ports and URL stay: one key moves a whole stack, an explicit one wins."""
    base = raw.get("port_base", PORT_BASE)
    if not isinstance(base, int) or isinstance(base, bool):
        return raw  # the field's own validation names the bad value
    raw = dict(raw)
    aggregator = dict(raw.get("aggregator") or {})
    if aggregator.get("port") is None:
        aggregator["port"] = base
    if aggregator.get("url") is None:
        host = str(aggregator.get("host") or "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
        tls = raw.get("tls")
        scheme = "https" if isinstance(tls, dict) and tls.get("enabled") else "http"
        aggregator["url"] = f"{scheme}://{host}:{aggregator['port']}"
    raw["aggregator"] = aggregator
    if isinstance(raw.get("workers"), list):
        raw["workers"] = [{**w, "port": base + k} if isinstance(w, dict) and w.get("port") is None else w
                          for k, w in enumerate(raw["workers"], start=1)]
    return raw


class Settings(_Section):
    port_base: int = Field(PORT_BASE, ge=1, le=65535)  # aggregator: this port; worker k: this + k (unless given)
    data: DataSettings
    model: ModelSettings = Field(default_factory=ModelSettings)
    federation: FederationSettings = FederationSettings()
    threshold: ThresholdSettings = ThresholdSettings()
    serving: ServingSettings = ServingSettings()
    streams: StreamSettings = StreamSettings()
    ingest: IngestSettings = IngestSettings()
    alarms: AlarmSettings = AlarmSettings()
    twin: TwinSettings = TwinSettings()
    models: ModelVersionSettings = ModelVersionSettings()
    buffer: LiveBufferSettings = LiveBufferSettings()
    drift: DriftSettings = DriftSettings()
    admin: AdminSettings = AdminSettings()
    privacy: PrivacySettings = PrivacySettings()
    tls: TlsSettings = TlsSettings()
    logging: LoggingSettings = LoggingSettings()
    dashboard: DashboardSettings = DashboardSettings()
    aggregator: AggregatorSettings = AggregatorSettings()
    enrollment: EnrollmentSettings = EnrollmentSettings()
    workers: list[WorkerSettings]  # may be empty when nodes enroll (enrollment)

    @model_validator(mode="before")
    @classmethod
    def _ports(cls, raw):
        return ports_from_base(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _unique_workers(self) -> Settings:
        ids = [w.id for w in self.workers]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"worker ids must be unique, repeated: {sorted(dup)}")
        if self.privacy.enabled and self.privacy.side == "server" and self.federation.strategy != "fedavg":
            raise ValueError("privacy.side server calibrates its noise to FedAvg's sensitivity: use strategy fedavg, "
                             f"or privacy.side client with {self.federation.strategy}")
        for w in self.workers:
            if w.source or w.training:
                try:
                    self.data_for(w)
                except ValidationError as exc:
                    raise ValueError(f"worker {w.id}'s data overrides: {_describe(exc).strip()}") from None
        if self.twin.enabled and not self.ingest.mqtt.enabled:
            raise ValueError("twin.enabled reports verdicts through the node's MQTT broker: set ingest.mqtt.enabled "
                             "too (KubeEdge: FEDAD__INGEST__MQTT__ENABLED=true)")
        if self.tls.enabled and not self.aggregator.url.startswith("https://"):
            raise ValueError(f"tls.enabled is true but aggregator.url is {self.aggregator.url}: "
                             "workers must reach the aggregator with https://")
        if not self.workers and not self.enrollment.enabled:
            raise ValueError("workers is empty and enrollment is off: no node could join (list workers, or set "
                             "enrollment.token / enrollment.certificates)")
        if self.enrollment.certificates and not self.tls.enabled:
            raise ValueError("enrollment.certificates needs tls.enabled: the certificate is the TLS client's")
        fed = self.federation
        if self.aggregator.role == "site" and fed.mode == "async":
            raise ValueError("aggregator.role site follows its upstream's rounds: federation.mode async is for the "
                             "root (a site's nodes reach it through the site's synchronous rounds)")
        return self

    @model_validator(mode="after")
    def _model_fits(self) -> Settings:
        problems = self.model.refusals(self.data, self.serving) + self.model.shape_refusals(self.input_width)
        if problems:
            raise ValueError("; ".join(problems))
        if self.model.hidden is None or self.model._derived:
            self.model.hidden = default_hidden(self.input_width)
            self.model._derived = True
        return self

    def worker(self, worker_id: str) -> WorkerSettings:
        for w in self.workers:
            if w.id == worker_id:
                return w
        raise ConfigError(f"workers: no worker with id {worker_id!r} (known: {[w.id for w in self.workers]})")

    def enrolled_worker(self, node_id: str, token: str) -> WorkerSettings:
        """An enrolled node's settings: enrollment.node with ``{id}`` filled in, and the token it enrolled."""
        node = self.enrollment.node.model_dump()
        node["state_dir"] = Path(str(node["state_dir"]).replace("{id}", node_id))
        node["partition"] = [p.replace("{id}", node_id) for p in node["partition"]]
        return WorkerSettings(id=node_id, token=token, **node)

    def data_for(self, worker: WorkerSettings) -> DataSettings:
        """The ``data`` section as ``worker`` reads its rows: data.source / data.training with its overrides."""
        if not worker.source and not worker.training:
            return self.data
        raw = self.data.model_dump()
        raw["source"] = {**raw["source"], **(worker.source or {})}
        raw["training"] = {**raw["training"], **(worker.training or {})}
        return DataSettings.model_validate(raw)

    @property
    def model_shape(self) -> str:
        """The model a node trains, in one phrase: ``dense 18→8→4→8→18`` (what data check, evaluate and /v1/status
        print), with where a dense shape came from."""
        model, width = self.model, self.input_width
        if model.kind == "dense":
            origin = "from the input width" if model._derived else "model.hidden"
            return f"dense {'→'.join(map(str, [width, *model.hidden_sizes, width]))} ({origin})"
        window, channels = self.data.window, len(self.data.model_columns)
        if model.kind == "conv1d":
            return f"conv1d over {window} rows × {channels} channels, channels {model.conv1d.channels}, kernel " \
                   f"{model.conv1d.kernel}"
        return f"lstm over {window} rows × {channels} channels, state {model.lstm.hidden}"

    @property
    def input_width(self) -> int:
        """Width of one model input: a window of consecutive rows, flattened, or its statistics per channel."""
        channels = len(self.data.model_columns)
        return channels * (len(self.data.window_stats) if self.data.window_stats else self.data.window)


def _apply_env_overrides(raw: dict, environ: dict[str, str]) -> dict:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = raw
        for i, key in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                key = _list_index(node, key, name, path[:i + 1])
            elif not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path[:i])} is not a section")
            if last:
                node[key] = yaml.safe_load(value)
            else:
                node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    return raw


def _list_index(items: list, key: str, name: str, where: list[str]) -> int:
    if key.isdigit() and int(key) < len(items):
        return int(key)
    for i, item in enumerate(items):
        if isinstance(item, dict) and str(item.get("id", "")).lower() == key:
            return i
    raise ConfigError(f"{name}: {'.'.join(where)} is neither an index nor an id in a list of {len(items)}")


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        # echo a scalar value, never a whole section or a token (config errors end up in logs)
        shown = e["type"] != "missing" and not isinstance(e["input"], (dict, list)) and "token" not in key
        lines.append(f"  {key}: {e['msg']}" + (f" (got {e['input']!r})" if shown else ""))
    return "\n".join(lines)


def config_path() -> Path:
    return Path(os.environ.get("FEDAD_CONFIG", DEFAULT_CONFIG))


def load_settings(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read config.yaml (or ``path``), apply ``FEDAD__…`` overrides, validate. Raises ConfigError naming the key."""
    path = Path(path) if path is not None else config_path()
    environ = dict(os.environ) if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = _apply_env_overrides(raw, environ)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration in {path}:\n{_describe(exc)}") from None
    return _resolve_paths(settings, path.resolve().parent)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative state and data paths are relative to the config file, so any working directory works."""
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    if settings.data.source.dir is not None:
        settings.data.source.dir = resolve(settings.data.source.dir)
    settings.aggregator.state_dir = resolve(settings.aggregator.state_dir)
    settings.tls.dir = resolve(settings.tls.dir)
    nodes: list[WorkerSettings | EnrolledNodeSettings] = [*settings.workers, settings.enrollment.node]
    for w in nodes:
        w.state_dir = resolve(w.state_dir)
        if w.source and w.source.get("dir") is not None:
            w.source["dir"] = resolve(Path(w.source["dir"]))
    return settings


def load_or_exit(path: Path | str | None = None) -> Settings:
    """For service entry points: an invalid config stops start-up with the message, not a traceback."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
