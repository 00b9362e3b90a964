"""Stable error codes of the REST protocol.

Every refusal is the JSON body ``{"code": "<code>", "detail": "<human text>"}``. Clients branch on ``code`` only:
``detail`` is for people and may be reworded at any time; a code, once published, keeps its name and meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    meaning: str


CODES: dict[str, ErrorCode] = {}


def _code(code: str, status: int, meaning: str) -> ErrorCode:
    CODES[code] = ErrorCode(code, status, meaning)
    return CODES[code]


# -- identity
MISSING_TOKEN = _code("missing_token", 401, "no `Authorization: Bearer <worker token>` header")
BAD_TOKEN = _code("bad_token", 403, "the bearer token belongs to no configured worker")
WRONG_WORKER = _code("wrong_worker", 403, "the token belongs to another worker than the id in the path")
NOT_ADMIN = _code("not_admin", 403, "a control request (start a round, roll back, pin) needs the admin token; a "
                                     "worker's token never is one")
ADMIN_DISABLED = _code("admin_disabled", 403, "no admin token is configured (admin.token or admin.token_sha256): "
                                              "control requests are refused")
REVOKED = _code("revoked", 403, "an admin revoked this node's enrollment: its identity is refused for good (enroll "
                                "again under another id)")
ENROLLMENT_DISABLED = _code("enrollment_disabled", 403, "this aggregator enrolls no nodes (enrollment.token and "
                                                        "enrollment.certificates are unset)")
BAD_ENROLLMENT_CREDENTIAL = _code("bad_enrollment_credential", 403, "neither the fleet's enrollment token nor a "
                                                                    "client certificate from the federation's CA")
CERTIFICATE_MISMATCH = _code("certificate_mismatch", 403, "the node id asked for differs from the common name of the "
                                                          "client certificate that enrolls it")
# -- federation state
SPEC_MISMATCH = _code("spec_mismatch", 409, "the worker's model spec (features, window, layers) differs from the "
                                            "federation's")
NOT_JOINED = _code("not_joined", 409, "the worker has not joined this run: join, then send again")
NO_OPEN_ROUND = _code("no_open_round", 409, "no round takes updates: the federation waits for workers or is done")
STALE_ROUND = _code("stale_round", 409, "the round is already closed: pull the newer model")
FUTURE_ROUND = _code("future_round", 409, "the round is not open yet")
CONFLICTING_UPDATE = _code("conflicting_update", 409, "this worker already sent a different update for the round "
                                                      "(the same bytes again are accepted)")
NOT_SAMPLED = _code("not_sampled", 409, "this node is not in the open round's sample (federation.clients_per_round): "
                                       "keep serving, install the next model, train when sampled")
TOO_STALE = _code("too_stale", 409, "the update was trained on a model more than federation.max_staleness versions "
                                    "old: pull the current model and train again")
ALREADY_ENROLLED = _code("already_enrolled", 409, "this node id is enrolled with another token: enroll under another "
                                                  "id, or with the node's certificate to replace the token")
CONFIGURED_WORKER = _code("configured_worker", 409, "this worker is listed in config.yaml: remove it there to revoke "
                                                    "it")
ROUND_OPEN = _code("round_open", 409, "a round is open already: a new one can start once it has closed")
WAITING_FOR_WORKERS = _code("waiting_for_workers", 409, "the federation still waits for min_workers to join: no "
                                                        "round can start yet")
CONTINUAL_OFF = _code("continual_off", 409, "every round is done and federation.continual.enabled is false: no "
                                            "round starts any more")
PINNED = _code("pinned", 409, "an admin pinned another model version on this worker: unpin it (DELETE "
                              "/v1/admin/pin) or pin the one to serve")
# -- the request itself
CLIENT_DISCONNECTED = _code("client_disconnected", 400, "the client closed the connection before its body was "
                                                        "complete: nothing was accepted")
UNREADABLE_BODY = _code("unreadable_body", 400, "the body could not be read: not UTF-8 JSON, or cut off")
NOT_FOUND = _code("not_found", 404, "no such route or file")
METHOD_NOT_ALLOWED = _code("method_not_allowed", 405, "the route exists but not with this method")
TOO_LARGE = _code("too_large", 413, "the body is larger than the model, a /detect batch than "
                                    "serving.max_batch_rows, or a device message than 1 MiB (checked before it is "
                                    "read when announced)")
BAD_MEDIA_TYPE = _code("bad_media_type", 415, "a body type the route does not take: weights must be "
                                              "application/octet-stream, OTLP metrics application/x-protobuf or "
                                              "application/json")
INVALID_UPDATE = _code("invalid_update", 422, "the weight body has the wrong size for the model")
HASH_MISMATCH = _code("hash_mismatch", 422, "the body does not match its X-Content-SHA256 header")
NON_FINITE = _code("non_finite", 422, "NaN or infinity in the weights, the training loss, /detect rows or device "
                                      "values (or a value beyond float32)")
TOO_MANY_SAMPLES = _code("too_many_samples", 422, "X-Sample-Count exceeds the sample count declared at join")
INVALID_REQUEST = _code("invalid_request", 422, "a body, field, header, query or path value fails validation")
# -- a worker's /detect and streams
NO_MODEL = _code("no_model", 503, "the worker serves no model yet: retry after its first federated round (GET /readyz)")
MALFORMED_JSON = _code("malformed_json", 422, "the /detect body (or a device message sent as JSON) is not JSON")
MISSING_FIELD = _code("missing_field", 422, 'the /detect body is not an object with a "samples" field')
BAD_SAMPLES = _code("bad_samples", 422, '"samples" is not a list of rows')
EMPTY_BATCH = _code("empty_batch", 422, "no rows to score")
BAD_ROW = _code("bad_row", 422, "a row is neither a list of numbers nor an object keyed by feature name")
MISSING_FEATURE = _code("missing_feature", 422, "a row object lacks one of the configured features")
WRONG_WIDTH = _code("wrong_width", 422, "a row has more or fewer values than there are features")
NOT_A_NUMBER = _code("not_a_number", 422, "a row value (or a device property's value) is a string, boolean, null or "
                                          "list, not a number")
BAD_BASELINE = _code("bad_baseline", 422, "the baseline is not a list of at least one window of rows, or "
                                          "X-Baseline-Rows is not a usable row count")
PARTIAL_ROW = _code("partial_row", 422, "a binary /detect body that is not a whole number of float32 rows")
BAD_STREAM_ID = _code("bad_stream_id", 422, "a stream id that is not 1-128 letters, digits and _ . : -")
BASELINE_ALREADY_SET = _code("baseline_already_set", 409, "a baseline for a stream that has its reference already "
                                                          "(DELETE /v1/streams/{id} to start it afresh)")
UNKNOWN_STREAM = _code("unknown_stream", 404, "the worker holds no such stream (never seen, evicted, or lost in "
                                              "a crash)")
# -- device data: the answers of HTTP push and OTLP metrics, and the reasons MQTT messages are counted by
BAD_PAYLOAD = _code("bad_payload", 422, "a device message or push body not in its format (form fields, OTLP protobuf "
                                        "or JSON, a KubeEdge document)")
NO_DEVICE = _code("no_device", 422, "no device named (OTLP: the resource attribute device.id)")
BAD_DEVICE_ID = _code("bad_device_id", 422, "a device id that is not 1-128 letters, digits and _ . : -")
UNKNOWN_PROPERTY = _code("unknown_property", 422, "none of the properties or metrics is a configured feature "
                                                  "(data.features)")
BAD_TIMESTAMP = _code("bad_timestamp", 422, "a timestamp that is neither epoch ms/s nor ISO 8601")
LATE = _code("late", 422, "a device reading older than the row its device assembled last (ingest.tolerance_s)")
INCOMPLETE_ROW = _code("incomplete_row", 422, "a device row still missing features after ingest.max_wait_s, dropped "
                                              "(ingest.missing: drop)")
QUEUE_FULL = _code("queue_full", 503, "ingest.queue_messages device messages already wait to be scored: the reading "
                                      "was not taken, send it again")
# -- the server
INTERNAL_ERROR = _code("internal_error", 500, "a bug in the server; its log has the traceback")
STORAGE_UNAVAILABLE = _code("storage_unavailable", 503, "the state disk refused a write: nothing changed, retry later")

# A worker cannot cure these by retrying: its token, its id or its config is wrong.
FATAL_CODES = frozenset(c.code for c in (MISSING_TOKEN, BAD_TOKEN, WRONG_WORKER, SPEC_MISMATCH, REVOKED))


class ProtocolError(Exception):
    """A refused request: the HTTP ``status`` and stable ``code`` come from ``error``, ``detail`` says what exactly."""

    def __init__(self, error: ErrorCode, detail: str):
        super().__init__(detail)
        self.error = error
        self.status = error.status
        self.code = error.code
        self.detail = detail

    def body(self) -> dict:
        return {"code": self.code, "detail": self.detail}


class Problem(BaseModel):
    """The body of every refusal."""

    code: str = Field(description="stable machine-readable reason; see the table of codes")
    detail: str = Field(description="what exactly is wrong, for people")


def error_of(body: bytes) -> Problem:
    """A refusal's code and detail, read by a client. A body without them (a proxy's error page, say) has the code
    ``unknown``, which no client treats as final."""
    try:
        return Problem.model_validate_json(body)
    except ValueError:
        return Problem(code="unknown", detail=body[:200].decode(errors="replace"))


def openapi_responses(*errors: ErrorCode) -> dict:
    """OpenAPI ``responses`` for a route that may refuse with ``errors``: one entry per status listing its codes."""
    by_status: dict[int, list[ErrorCode]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    return {status: {"model": Problem, "description": "; ".join(f"`{e.code}`: {e.meaning}" for e in listed)}
            for status, listed in sorted(by_status.items())}
