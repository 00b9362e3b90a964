"""One real stack for the observability tests: aggregator + the three SKAB workers on free loopback ports, ROUNDS (2)
rounds of 1 epoch, JSON logs, telemetry every second; then real /detect traffic and a few refused requests to count."""

from __future__ import annotations

import httpx
import pytest

from observability.helpers import BATCHES, ROUNDS, send_detect_traffic
from services.config import load_settings
from support import Stack, wait_until


@pytest.fixture(scope="session")
def observed_stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("observed"), rounds=ROUNDS, epochs=1, overrides={
        "FEDAD__LOGGING__FORMAT": "json",
        "FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "1",
    })
    stack.start()
    try:
        stack.final_status = stack.wait_done()
        settings = load_settings(environ=stack.env)
        stack.settings = settings
        urls = {w: stack.worker_url(w) for w in stack.workers}
        stack.traffic = send_detect_traffic(settings, urls, batches=BATCHES, rows=60,
                                            pause_s=1.0 if BATCHES > 4 else 0.0)
        # What must be refused, and counted by reason: an update with no round open, one with no token, a /detect
        # batch of the wrong width.
        token = {w.id: w.token for w in settings.workers}["valve1"]
        refused = httpx.post(f"{stack.agg_url}/v1/rounds/{ROUNDS + 1}/updates", content=b"\0" * 16,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
                                      "X-Sample-Count": "1", "X-Train-Loss": "0.5"})
        assert refused.status_code == 409, refused.text
        anonymous = httpx.post(f"{stack.agg_url}/v1/rounds/1/updates", content=b"\0" * 16,
                               headers={"Content-Type": "application/octet-stream", "X-Sample-Count": "1",
                                        "X-Train-Loss": "0.5"})
        assert anonymous.status_code == 401, anonymous.text
        narrow = httpx.post(f"{urls['valve1']}/detect", json={"samples": [[1.0, 2.0]]})
        assert narrow.status_code == 422, narrow.text

        def telemetry_caught_up():  # the aggregator has every worker's latest counts
            d = httpx.get(f"{stack.agg_url}/v1/dashboard", timeout=5).json()
            got = {w["id"]: w["rows_scored"] for w in d["workers"]}
            return d if all(got.get(w) == stack.traffic[w]["rows"] for w in stack.workers) else None

        stack.dashboard = wait_until(telemetry_caught_up, 20, "telemetry to reach the aggregator")
        stack.dashboard_traffic = {w: dict(t) for w, t in stack.traffic.items()}  # what that snapshot counted
        yield stack
    finally:
        stack.stop()
