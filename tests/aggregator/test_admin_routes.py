"""Continual rounds against a real aggregator process: the test plays two workers over HTTP with their real tokens and
the operator with the admin token. An admin round, a schedule that skips without new rows, new rows that open a
round before their report is answered, the long-poll of GET /v1/round, kill -9 right after a round was opened, and
the battery of hostile requests to the admin and report routes (4xx with a stable code, never 2xx, never 5xx)."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import numpy as np
import pytest

from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.model.layout import count_parameters, spec_hash
from services.protocol.codec import content_hash, decode_weights, encode_weights
from services.protocol.errors import CODES
from support import Stack, wait_until

SETTINGS = load_settings()
N = count_parameters(SETTINGS.input_width, SETTINGS.model.hidden)
SPEC = spec_hash(SETTINGS.input_width, SETTINGS.model.hidden)
TOKENS = {w.id: w.token for w in SETTINGS.workers}
ADMIN = {"Authorization": f"Bearer {SETTINGS.admin.token}"}
WORKERS = ("valve2", "other")


def auth(worker: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[worker]}"}


def join_body() -> dict:
    rows = np.random.default_rng(0).normal(size=(400, len(SETTINGS.data.features)))
    return {"spec_hash": SPEC, "sample_count": 400, "stats": FeatureStats.from_rows(rows).model_dump()}


def push(client: httpx.Client, worker: str, round_no: int, weights: np.ndarray) -> httpx.Response:
    body = encode_weights(weights)
    return client.post(f"/v1/rounds/{round_no}/updates", content=body, headers={
        **auth(worker), "Content-Type": "application/octet-stream", "X-Sample-Count": "100", "X-Train-Loss": "0.1",
        "X-Content-SHA256": content_hash(body)})


def start(tmp_path, **continual) -> tuple[Stack, httpx.Client]:
    """A real aggregator after its one-round campaign, idle: both workers joined and sent round 1."""
    overrides = {f"FEDAD__FEDERATION__CONTINUAL__{k.upper()}": str(v) for k, v in continual.items()}
    stack = Stack(tmp_path, workers=list(WORKERS), rounds=1, min_workers=2, quorum=2, overrides=overrides)
    stack.aggregator.start().wait_healthy()
    client = httpx.Client(base_url=stack.agg_url, timeout=30)
    for w in WORKERS:
        assert client.post(f"/v1/workers/{w}/join", json=join_body(), headers=auth(w)).status_code == 200
    stack.initial = decode_weights(client.get("/v1/model", headers=auth("valve2")).content, N)
    for w in WORKERS:
        assert push(client, w, 1, stack.initial + 0.5).status_code == 200
    assert client.get("/v1/round", headers=auth("valve2")).json()["phase"] == "idle"
    return stack, client


@pytest.fixture()
def idle(tmp_path):
    stack, client = start(tmp_path, min_new_rows="null", on_drift="false")
    yield stack, client
    client.close()
    stack.stop()


def refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and CODES[code].status == status, response.text
    return response.json()["detail"]


def test_an_admin_round_opens_wakes_the_long_poll_and_closes_with_every_live_worker(idle):
    stack, c = idle
    answers = []
    poll = threading.Thread(target=lambda: answers.append(c.get(
        "/v1/round", params={"after": 1, "wait": 20}, headers=auth("valve2"))))
    poll.start()
    time.sleep(0.5)
    asked = time.monotonic()
    opened = c.post("/v1/admin/rounds", json={"reason": "new valves installed"}, headers=ADMIN)
    assert (opened.status_code, opened.json()) == (202, {"round": 2, "trigger": "admin"})
    poll.join(10)
    assert answers and answers[0].json() == {"phase": "training", "open_round": 2, "rounds_done": 1,
                                             "rounds_total": 1, "continual": True, "sampled": None,
                                             "mode": "sync", "directive": None}
    assert time.monotonic() - asked < 3, "the long-poll answers when the round opens, not at its timeout"
    refused(c.post("/v1/admin/rounds", headers=ADMIN), 409, "round_open")

    assert push(c, "valve2", 2, stack.initial + 1).status_code == 200
    early = time.monotonic()
    r = c.get("/v1/round", params={"after": 1, "wait": 1}, headers=auth("valve2"))
    assert r.json()["phase"] == "training" and time.monotonic() - early >= 0.9, "valve2 sent: nothing to do yet"
    assert push(c, "other", 2, stack.initial + 2).status_code == 200
    status = c.get("/v1/status").json()
    assert status["phase"] == "idle" and status["rounds_done"] == 2
    assert (status["history"][-1]["trigger"], status["history"][-1]["closed_by"]) == ("admin", "all_live")


def test_a_round_opened_just_before_kill_9_is_open_after_the_restart(idle):
    stack, c = idle
    assert c.post("/v1/admin/rounds", headers=ADMIN).status_code == 202
    stack.aggregator.kill(signal.SIGKILL)
    stack.aggregator.start().wait_healthy()
    assert c.get("/v1/round", headers=auth("other")).json()["open_round"] == 2
    for w in WORKERS:
        assert push(c, w, 2, stack.initial + 1).status_code == 200
    history = c.get("/v1/status").json()["history"]
    assert [h["trigger"] for h in history] == ["campaign", "admin"]


def test_the_schedule_skips_without_new_rows_and_opens_a_round_with_them(tmp_path):
    stack, c = start(tmp_path, every_s=1, min_new_rows="null", on_drift="false")
    try:
        skipped = wait_until(lambda: c.get("/v1/status").json()["continual"]["skipped"], 10, "a skipped round")
        assert skipped[0]["reason"] == "no worker reported new rows" and skipped[0]["round"] == 2
        assert c.get("/v1/round", headers=auth("valve2")).json()["phase"] == "idle"
        assert c.post("/v1/workers/valve2/report", json={"new_rows": 12}, headers=auth("valve2")).json() == {
            "recorded": True, "directive": None}
        state = c.get("/v1/round", params={"after": 1, "wait": 10}, headers=auth("valve2")).json()
        assert state["phase"] == "training" and state["open_round"] == 2
        assert c.get("/v1/status").json()["continual"]["open_round_trigger"] == "schedule"
    finally:
        c.close()
        stack.stop()


def test_new_rows_at_enough_workers_open_a_round_before_the_report_is_answered(tmp_path):
    stack, c = start(tmp_path, min_new_rows=100, min_workers_with_new_data=2)
    try:
        assert c.post("/v1/workers/valve2/report", json={"new_rows": 500}, headers=auth("valve2")).status_code == 200
        assert c.get("/v1/status").json()["phase"] == "idle", "one worker of the two needed"
        c.post("/v1/workers/other/report", json={"new_rows": 100, "served_round": 1, "versions": [
            {"round": 1, "status": "served"}]}, headers=auth("other"))
        stack.aggregator.kill(signal.SIGKILL)  # answered: the round is on disk
        stack.aggregator.start().wait_healthy()
        status = c.get("/v1/status").json()
        assert status["phase"] == "training" and status["continual"]["open_round_trigger"] == "new_data"
    finally:
        c.close()
        stack.stop()


# -- hostile requests ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    stack, client = start(tmp_path_factory.mktemp("hostile"), min_new_rows="null", on_drift="false")
    yield client
    client.close()
    stack.stop()


REPORT = "/v1/workers/valve2/report"
JSON = {"Content-Type": "application/json"}
BATTERY = [
    # (id, method, path, headers, body, status, code)
    ("admin: no token", "POST", "/v1/admin/rounds", {}, b"", 401, "missing_token"),
    ("admin: basic auth", "POST", "/v1/admin/rounds", {"Authorization": "Basic YWRtaW46eA=="}, b"", 401,
     "missing_token"),
    ("admin: a worker's token", "POST", "/v1/admin/rounds", auth("valve2"), b"", 403, "not_admin"),
    ("admin: wrong token", "POST", "/v1/admin/rounds", {"Authorization": "Bearer not-the-admin"}, b"", 403,
     "not_admin"),
    ("admin: the token's digest as token", "POST", "/v1/admin/rounds",
     {"Authorization": f"Bearer {SETTINGS.admin.digest}"}, b"", 403, "not_admin"),
    ("admin: bad JSON", "POST", "/v1/admin/rounds", {**ADMIN, **JSON}, b'{"reason": ', 422, "invalid_request"),
    ("admin: reason not a string", "POST", "/v1/admin/rounds", {**ADMIN, **JSON}, b'{"reason": 5}', 422,
     "invalid_request"),
    ("admin: reason too long", "POST", "/v1/admin/rounds", {**ADMIN, **JSON},
     b'{"reason": "' + b"x" * 201 + b'"}', 422, "invalid_request"),
    ("admin: unknown field", "POST", "/v1/admin/rounds", {**ADMIN, **JSON}, b'{"round": 9}', 422, "invalid_request"),
    ("admin: a list", "POST", "/v1/admin/rounds", {**ADMIN, **JSON}, b"[1, 2]", 422, "invalid_request"),
    ("admin: huge body", "POST", "/v1/admin/rounds", {**ADMIN, **JSON},
     b'{"reason": "x", "pad": "' + b" " * 2_000_000 + b'"}', 413, "too_large"),
    ("admin: huge body without a token", "POST", "/v1/admin/rounds", JSON, b" " * 2_000_000, 401, "missing_token"),
    ("admin: GET", "GET", "/v1/admin/rounds", ADMIN, b"", 405, "method_not_allowed"),
    ("report: no token", "POST", REPORT, JSON, b'{"new_rows": 1}', 401, "missing_token"),
    ("report: wrong token", "POST", REPORT, {"Authorization": "Bearer wrong", **JSON}, b'{"new_rows": 1}', 403,
     "bad_token"),
    ("report: another worker's id", "POST", "/v1/workers/other/report", {**auth("valve2"), **JSON},
     b'{"new_rows": 1}', 403, "wrong_worker"),
    ("report: an unknown id", "POST", "/v1/workers/ghost/report", {**auth("valve2"), **JSON}, b'{"new_rows": 1}',
     403, "wrong_worker"),
    ("report: the admin token", "POST", REPORT, {**ADMIN, **JSON}, b'{"new_rows": 1}', 403, "bad_token"),
    ("report: bad JSON", "POST", REPORT, {**auth("valve2"), **JSON}, b'{"new_rows": ', 422, "invalid_request"),
    ("report: empty body", "POST", REPORT, {**auth("valve2"), **JSON}, b"", 422, "invalid_request"),
    ("report: negative rows", "POST", REPORT, {**auth("valve2"), **JSON}, b'{"new_rows": -1}', 422,
     "invalid_request"),
    ("report: rows a string", "POST", REPORT, {**auth("valve2"), **JSON}, b'{"new_rows": "many"}', 422,
     "invalid_request"),
    ("report: drift a list", "POST", REPORT, {**auth("valve2"), **JSON}, b'{"drift": [1]}', 422, "invalid_request"),
    ("report: NaN figure", "POST", REPORT, {**auth("valve2"), **JSON},
     b'{"versions": [{"round": 1, "status": "served", "figures": {"f1": NaN}}]}', 422, "invalid_request"),
    ("report: unknown version status", "POST", REPORT, {**auth("valve2"), **JSON},
     b'{"versions": [{"round": 1, "status": "stolen"}]}', 422, "invalid_request"),
    ("report: 101 versions", "POST", REPORT, {**auth("valve2"), **JSON},
     ('{"versions": [' + ", ".join(['{"round": 1, "status": "kept"}'] * 101) + "]}").encode(), 422,
     "invalid_request"),
    ("report: huge body", "POST", REPORT, {**auth("valve2"), **JSON},
     b'{"new_rows": 1, "pad": "' + b"x" * 3_000_000 + b'"}', 413, "too_large"),
    ("report: a number", "POST", REPORT, {**auth("valve2"), **JSON}, b"7", 422, "invalid_request"),
    ("round: no token", "GET", "/v1/round", {}, b"", 401, "missing_token"),
    ("round: wait beyond 60 s", "GET", "/v1/round?after=1&wait=61", auth("valve2"), b"", 422, "invalid_request"),
    ("round: after negative", "GET", "/v1/round?after=-1&wait=1", auth("valve2"), b"", 422, "invalid_request"),
]


@pytest.mark.parametrize("case", BATTERY, ids=[c[0] for c in BATTERY])
def test_hostile_requests_are_refused_with_a_stable_code(hostile, case):
    _, method, path, headers, body, status, code = case
    r = hostile.request(method, path, headers=headers, content=body or None)
    assert 400 <= r.status_code < 500, f"{case[0]}: {r.status_code} {r.text[:200]}"
    refused(r, status, code)


def test_the_battery_leaves_the_federation_as_it_was(hostile):
    for case in BATTERY:
        hostile.request(case[1], case[2], headers=case[3], content=case[4] or None)
    status = hostile.get("/v1/status").json()
    assert status["phase"] == "idle" and status["rounds_done"] == 1
    assert status["workers"]["valve2"]["new_rows"] is None, "no hostile report was recorded"


def test_chunked_huge_report_is_refused_while_it_streams(hostile):
    def chunks():
        yield b'{"new_rows": 1, "pad": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'
    refused(hostile.post(REPORT, content=chunks(), headers={**auth("valve2"), **JSON}), 413, "too_large")


def test_without_an_admin_token_every_control_request_is_refused(tmp_path):
    stack = Stack(tmp_path, workers=list(WORKERS), rounds=1, min_workers=2, quorum=2,
                  overrides={"FEDAD__ADMIN__TOKEN": "null"})
    stack.aggregator.start().wait_healthy()
    try:
        with httpx.Client(base_url=stack.agg_url, timeout=30) as c:
            refused(c.post("/v1/admin/rounds", headers=ADMIN), 403, "admin_disabled")
            refused(c.post("/v1/admin/rounds"), 403, "admin_disabled")
    finally:
        stack.stop()


def test_an_admin_round_while_workers_are_awaited_is_refused(tmp_path):
    stack = Stack(tmp_path, workers=list(WORKERS), rounds=1, min_workers=2, quorum=2)
    stack.aggregator.start().wait_healthy()
    try:
        with httpx.Client(base_url=stack.agg_url, timeout=30) as c:
            refused(c.post("/v1/admin/rounds", headers=ADMIN), 409, "waiting_for_workers")
            assert c.get("/v1/round", headers=auth("other")).json()["phase"] == "waiting"
    finally:
        stack.stop()


def test_the_status_and_the_dashboard_show_the_rule_and_what_each_node_serves_and_why(idle):
    _, c = idle
    report = {"new_rows": 42, "drift_events": 3, "served_round": 1, "versions": [
        {"round": 1, "status": "served", "figures": {"f1": 0.91}},
        {"round": 2, "status": "refused", "reason": "F1 dropped by 0.12 (max 0.05)"}]}
    assert c.post("/v1/workers/valve2/report", json=report, headers=auth("valve2")).status_code == 200
    status = c.get("/v1/status").json()
    assert status["continual"]["enabled"] and "admin asks" in status["continual"]["rule"]
    assert status["continual"]["every_s"] is None and status["continual"]["next_scheduled_in_s"] is None
    shown = {w["id"]: w for w in c.get("/v1/dashboard").json()["workers"]}
    assert (shown["valve2"]["new_rows"], shown["valve2"]["drift_events"]) == (42, 3)
    assert shown["valve2"]["model"]["served_round"] == 1
    assert shown["valve2"]["model"]["last_refused"] == {"round": 2, "reason": "F1 dropped by 0.12 (max 0.05)"}
    assert shown["other"]["model"] is None
    page = c.get("/static/aggregator.js").text
    assert "last_refused" in page and "continual-rule" in page
