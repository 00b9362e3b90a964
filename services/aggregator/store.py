"""The aggregator's state on disk, written so that kill -9 at any instant leaves the old or the new state.

Layout of the state dir:
  state.json                 run id, rounds done, scaler, joined workers, history, hash of the global weights
  global-<round>.f32         global weights after <round> rounds (written before state.json names it)
  pending/<round>/<id>.f32   an accepted update of the open round, with <id>.json for its metadata
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services import atomic
from services.protocol.codec import content_hash, decode_weights, encode_weights


class AggregatorStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(self.dir)

    def load(self, n_params: int) -> tuple[dict, np.ndarray] | None:
        """The last committed state and its global weights, or None on a first start."""
        state = atomic.read_json(self.dir / "state.json")
        if state is None:
            return None
        body = (self.dir / state["files"]["global.f32"]).read_bytes()
        return state, decode_weights(body, n_params, state["global_sha256"])

    def commit(self, state: dict, global_weights: np.ndarray) -> dict:
        body = encode_weights(global_weights)
        state = {**state, "global_sha256": content_hash(body)}
        return atomic.commit_snapshot(self.dir, state["rounds_done"], {"global.f32": body}, state)

    def save_update(self, round_no: int, worker_id: str, body: bytes, meta: dict) -> None:
        folder = self.dir / "pending" / str(round_no)
        atomic.write_bytes(folder / f"{worker_id}.f32", body)
        atomic.write_json(folder / f"{worker_id}.json", meta)

    def pending_updates(self, round_no: int, n_params: int) -> list[tuple[str, np.ndarray, dict]]:
        """Updates accepted for ``round_no`` before a restart, so no completed upload is lost."""
        folder = self.dir / "pending" / str(round_no)
        found = []
        for meta_file in sorted(folder.glob("*.json")):
            meta = atomic.read_json(meta_file)
            weights_file = meta_file.with_suffix(".f32")
            if meta is None or not weights_file.exists():
                continue
            found.append((meta_file.stem, decode_weights(weights_file.read_bytes(), n_params, meta["sha256"]), meta))
        return found

    def drop_pending(self, up_to_round: int) -> None:
        for folder in (self.dir / "pending").glob("*"):
            if folder.name.isdigit() and int(folder.name) <= up_to_round:
                for f in folder.iterdir():
                    f.unlink(missing_ok=True)
                folder.rmdir()
