"""Structured logs: on the real stack (logging.format json) every line is one JSON object carrying the worker id and
the round; the text format carries them too."""

from __future__ import annotations

import json
import logging

from observability.helpers import ROUNDS
from services import logs


def json_lines(service) -> list[dict]:
    text = service.log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, f"{service.name} logged nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"{service.name} wrote a line that is not JSON: {line!r}") from None
    return parsed


def test_every_worker_line_names_the_worker_and_a_round(observed_stack):
    for worker, service in observed_stack.worker_services.items():
        lines = json_lines(service)
        for line in lines:
            assert {"time", "level", "service", "worker", "round", "logger", "message"} <= set(line), line
            assert line["service"] == "worker" and line["worker"] == worker, line
            assert isinstance(line["round"], int) and 0 <= line["round"] <= observed_stack.final_status["rounds_total"]
        trained = [l for l in lines if l["message"].startswith("round ") and ": trained" in l["message"]]
        assert [l["round"] for l in trained] == list(range(1, ROUNDS + 1)), "each training line has its own round"
        for line in trained:
            assert line["message"].startswith(f"round {line['round']}:")


def test_aggregator_lines_name_the_calling_worker_and_the_round(observed_stack):
    lines = json_lines(observed_stack.aggregator)
    for line in lines:
        assert line["service"] == "aggregator" and "worker" in line and isinstance(line["round"], int), line
    joins = [l for l in lines if " joined (" in l["message"]]
    assert joins and all(l["message"].startswith(f"worker {l['worker']} joined") for l in joins), joins
    closed = [l for l in lines if " closed (" in l["message"]]
    assert [l["round"] for l in closed] == list(range(1, ROUNDS + 1)), "a round's closing line carries that round"
    refused = [l for l in lines if "refused (409)" in l["message"]]
    assert refused and refused[-1]["worker"] == "valve1", "a refusal names the worker whose token was used"
    anonymous = [l for l in lines if "refused (401)" in l["message"]]
    assert anonymous and anonymous[-1]["worker"] is None


def _format(fmt: str, worker: str | None, service: str, message: str, **extra) -> str:
    logs.setup_logging(service, "INFO", fmt, worker=worker)
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord("fedad.test", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    for f in handler.filters:
        f.filter(record)
    return handler.format(record)


def test_text_and_json_formats_carry_worker_and_round():
    root = logging.getLogger()
    saved = root.handlers[:], root.level, dict(logs._process)
    logs.bind_round(lambda: 7)
    token = logs.worker_context.set("valve2")
    try:
        assert " INFO worker[valve1] round=7 hello" in _format("text", "valve1", "worker", "hello")
        assert " INFO aggregator worker=valve2 round=7 hi" in _format("text", None, "aggregator", "hi")
        line = json.loads(_format("json", None, "aggregator", "closing", round=6))
        assert (line["worker"], line["round"], line["message"]) == ("valve2", 6, "closing")
    finally:
        logs.worker_context.reset(token)
        logs.bind_round(None)
        root.handlers[:], level, process = saved  # leave pytest's logging as it was found
        root.setLevel(level)
        logs._process.update(process)
        logging.captureWarnings(False)
