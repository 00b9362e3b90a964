"""Shared by the observability tests: the stack's settings and real /detect traffic from SKAB's held-out rows."""

from __future__ import annotations

import os
import time

import httpx

from services.config import Settings
from services.data.sources import load_node

# Rounds the observed stack trains, and /detect batches it sends afterwards (a batch per second once there are more
# than 4, so the anomalies chart shows time). `make dashboard-screenshot` raises both for the docs' picture.
ROUNDS = int(os.environ.get("FEDAD_OBS_ROUNDS", "2"))
BATCHES = int(os.environ.get("FEDAD_OBS_BATCHES", "4"))


def send_detect_traffic(settings: Settings, worker_urls: dict[str, str], batches: int = 3, rows: int = 50,
                        pause_s: float = 0.0) -> dict[str, dict]:
    """POST ``batches`` rounds of one batch of ``rows`` consecutive held-out rows (with the run's first rows as
    baseline) to each worker's /detect; returns per worker the requests, rows scored and anomalies flagged, as the
    answers said."""
    train_rows = settings.data.train_rows
    experiments = {w.id: load_node(settings, w).runs for w in settings.workers if w.id in worker_urls}
    sent = {w: {"requests": 0, "rows": 0, "anomalies": 0} for w in experiments}
    with httpx.Client(timeout=30) as client:
        for b in range(batches):
            if b and pause_s:
                time.sleep(pause_s)
            for worker, runs in experiments.items():
                e = runs[b % len(runs)]
                start = train_rows + (b * rows) % max(1, len(e.values) - train_rows - rows)
                body = {"baseline": e.values[:train_rows].tolist(), "samples": e.values[start:start + rows].tolist()}
                r = client.post(f"{worker_urls[worker]}/detect", json=body)
                r.raise_for_status()
                answer = r.json()
                sent[worker]["requests"] += 1
                sent[worker]["rows"] += len(answer["scores"])
                sent[worker]["anomalies"] += sum(answer["is_anomaly"])
    return sent
