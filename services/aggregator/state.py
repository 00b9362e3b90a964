"""The run's state as ``state.json`` holds it, typed: one frozen record, replaced as a whole on every change.

The round state machine (rounds.py) builds the next state with ``dataclasses.replace`` and makes it current only
once the store has committed it, so a refused write (full disk) leaves the state in memory as it was on disk. The
store (store.py) reads and writes plain JSON; ``from_json`` / ``to_json`` are the one place its keys are named.
A state.json written before a field existed loads with that field's default.

What grows with the fleet is not here: the joined workers, their reports and the enrolled nodes live in journals
(services/aggregator/journal.py), so a join never rewrites this file. ``joined`` is read only to move a state.json
of an earlier version into the members journal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class RunState:
    run_id: str
    rounds_done: int = 0
    scaler: dict | None = None  # services.protocol.scaling.Scaler as JSON: frozen once min_workers have joined
    joined: dict[str, dict] = field(default_factory=dict)  # earlier versions' members (now members.log)
    history: list[dict] = field(default_factory=list)  # one record per closed round, oldest first
    rounds_target: int = 0  # rounds to have done once a continual trigger opened one (0: the campaign's)
    round_trigger: dict | None = None  # what opened the last continual round: round, trigger, reason, at
    skipped: list[dict] = field(default_factory=list)  # the latest scheduled rounds skipped for want of new rows
    privacy: dict | None = None  # server-side DP: the accountant's state (services/security/accountant.py)
    sample: dict | None = None  # the open round's sample: {"round", "nodes"} (federation.clients_per_round)
    directive: dict | None = None  # the fleet's model directive: {"seq", "action", "version", "at", "reason"}
    upstream: dict | None = None  # a site aggregator: what its upstream said (rounds_total, continual, scaler)
    global_sha256: str = ""  # of the global weights the state names (set by the store's commit)
    files: dict[str, str] = field(default_factory=dict)  # blob name → versioned file (set by the store's commit)

    @classmethod
    def from_json(cls, document: dict) -> RunState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in known})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
