"""JSON messages of the REST protocol (weights themselves are binary: see codec.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.protocol.scaling import FeatureStats, Scaler

API_VERSION = "v1"
# Headers that travel with binary weights.
H_ROUND = "X-Model-Round"
H_SHA256 = "X-Content-SHA256"
H_SAMPLES = "X-Sample-Count"
H_LOSS = "X-Train-Loss"
H_SPEC = "X-Model-Spec"


class JoinRequest(BaseModel):
    spec_hash: str = Field(description="hash of the model architecture the worker builds from its config")
    sample_count: int = Field(gt=0, description="number of local training windows")
    stats: FeatureStats = Field(description="per-feature count / sum / sum of squares of the local training rows")
    role: Literal["train", "detect_only"] = Field(
        "train", description="detect_only: the worker serves the global models and never trains; it does not count "
                             "for min_workers or quorum, and its statistics do not enter the scaler")


class TrainingPlan(BaseModel):
    """How every worker trains a round: sent by the aggregator in the join answer and used as sent, so one config
    (the aggregator's) decides it for the whole federation."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    fedprox_mu: float

    @classmethod
    def from_settings(cls, settings) -> TrainingPlan:
        m = settings.model
        return cls(local_epochs=m.local_epochs, batch_size=m.batch_size, learning_rate=m.learning_rate,
                   fedprox_mu=settings.federation.fedprox_mu)


class JoinResponse(BaseModel):
    run_id: str
    phase: str
    round: int = Field(description="the round open for updates (rounds_done + 1 while training)")
    rounds_done: int
    rounds_total: int
    plan: TrainingPlan
    scaler: Scaler | None = Field(description="federated feature scaling; null until min_workers have joined")
    mode: Literal["sync", "async"] = Field("sync", description="async: updates are folded as they arrive and a "
                                                               "model published every buffer_size of them")
    sampling: bool = Field(False, description="true: a sample of the live nodes trains each round; ask GET "
                                              "/v1/round whether this node is in it before training")


class FleetDirective(BaseModel):
    """What an admin asked every worker of the fleet to serve (``POST /v1/admin/fleet/...``); workers follow the
    newest ``seq`` once and report how it went."""

    model_config = ConfigDict(extra="ignore")

    seq: int = Field(ge=1, description="increases with each directive")
    action: Literal["serve", "pin", "unpin"]
    version: str | None = Field(None, max_length=32, description="the model version (\"12\" or \"12.1\"); "
                                                                 "null for unpin")
    reason: str = Field("", max_length=200)
    at: float


class DirectiveResult(BaseModel):
    """A worker's answer to a directive, sent with its reports."""

    model_config = ConfigDict(extra="ignore")

    seq: int = Field(ge=1)
    status: Literal["applied", "refused"]
    detail: str = Field("", max_length=500)


class Telemetry(BaseModel):
    """What a worker reports to the aggregator's dashboard: cumulative counters since its process started
    (``boot_id`` names that process); counts only, never rows or scores."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    boot_id: str = Field(min_length=1, max_length=64)
    phase: str = Field("", max_length=64)
    model_round: int | None = Field(None, ge=0)
    threshold: float | None = None
    detect_requests: int = Field(0, ge=0)
    rows_scored: int = Field(0, ge=0)
    anomalies_flagged: int = Field(0, ge=0)
    open_alarms: int = Field(0, ge=0)  # streams whose alarm is open now (a gauge, not a counter)
    training_loss: float | None = None
    drift_events: int = Field(0, ge=0)  # drift signals since the process started (services/worker/drift.py)
    buffer_rows: int = Field(0, ge=0)  # live rows kept for the next rounds (a gauge)
    precision: str | None = Field(None, max_length=8)  # int8 | fp32: the served session
    precision_reason: str | None = Field(None, max_length=300)  # why (services/model/precision.py)


class RoundState(BaseModel):
    """``GET /v1/round``: where the federation stands, so a worker knows when to train (long-poll with ``wait``)."""

    phase: Literal["waiting", "training", "idle", "done"] = Field(
        description="waiting: for min_workers to join | training: round open_round takes updates | idle: continual, "
                    "waiting for a trigger | done: not continual, every round done")
    open_round: int | None = Field(description="the round that takes updates now, or null")
    rounds_done: int
    rounds_total: int = Field(description="rounds of the first campaign (federation.rounds)")
    continual: bool
    sampled: bool | None = Field(None, description="whether the caller is in the open round's sample (null: no "
                                                   "sampling, every live node trains)")
    mode: Literal["sync", "async"] = "sync"
    directive: FleetDirective | None = Field(None, description="the fleet's newest model directive, if any")


class ModelVersionReport(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    round: int = Field(ge=0)
    status: Literal["served", "kept", "refused", "retired"]
    reason: str = Field("", max_length=500)
    figures: dict[str, float | int | bool | None] = Field(default_factory=dict)


class WorkerReport(BaseModel):
    """``POST /v1/workers/{id}/report``: what a worker tells the aggregator about its data and its models, sent when
    it changes (counts and figures only, never rows). New rows and drift may open a continual round."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    new_rows: int = Field(0, ge=0, description="rows not yet trained on: new source files, normal live rows")
    drift: bool = Field(False, description="drift detected since the last round: asks for one")
    drift_events: int = Field(0, ge=0)
    served_round: int | None = Field(None, ge=0, description="the global round whose model /detect serves")
    pinned: int | None = Field(None, ge=0, description="an admin pinned this round: newer models are not served")
    versions: list[ModelVersionReport] = Field(default_factory=list, max_length=100)
    directive: DirectiveResult | None = Field(None, description="how the newest fleet directive went here")
