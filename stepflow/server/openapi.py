"""The OpenAPI 3.1 document of every route the server answers, served at `GET /openapi.json` (no authentication).

The document is built here, in Python, rather than kept as a JSON file beside the code:

- it ships inside the `stepflow` package with no packaging rule (a `.json` data file needs package-data
  configuration, and `runtimes/schemas/` is not part of the wheel at all);
- the numbers and names the server enforces are taken from the code that enforces them — the page and wait
  limits, the event limits, the run and step statuses — so the document cannot drift from them;
- `tests/test_openapi.py` keeps the rest true: the routes the app registers and the document's operations are
  the same set, the document validates, the v2 run schema is the InngestRun JSON Schema of
  `runtimes/schemas/inngest-run.schema.json`, and `tests/test_fuzz_api.py` runs schemathesis against a live
  server (no 500, every answer conforms to this document).

Two error shapes: the REST routes answer `{"error": {"code", "message"}}`; the routes the official Inngest SDKs
call (`POST /e/{event_key}`, `POST /fn/register`) answer `{"error": "<message>", "code", "status"}`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from aiohttp import web

from stepflow.events import MAX_EVENTS_PER_REQUEST
from stepflow.server.app import json_response
from stepflow.server.openapi_schemas import (
    EVENT_ID_PATTERN,
    EXAMPLE_EVENT_ID,
    EXAMPLE_FN_ID,
    EXAMPLE_IDEMPOTENCY_KEY,
    EXAMPLE_RUN_ID,
    EXTENDED,
    INNGEST_RUN_SCHEMA,
    RUN_V2_EITHER,
    ULID_PATTERN,
    _any_case,
    _ref,
    schemas,
)
from stepflow.server.routes_rest import MAX_PAGE, MAX_WAIT_SECONDS
from stepflow.store.records import RunStatus

__all__ = ["EXAMPLE_EVENT_ID", "EXAMPLE_FN_ID", "EXAMPLE_IDEMPOTENCY_KEY", "EXAMPLE_RUN_ID", "INNGEST_RUN_SCHEMA",
           "OPENAPI_PATH", "document", "setup"]

OPENAPI_PATH = "/openapi.json"

JSON = "application/json"
SDK_PATHS = ("/e/{event_key}", "/fn/register")   # answer errors in the shape the official Inngest SDKs parse


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int, sdk: bool = False) -> dict[str, Any]:
    texts = {400: "invalid request: a malformed id, query parameter, body or HTTP request", 401: "missing or wrong key",
             404: "no such record", 408: "the request's headers or body did not arrive in time",
             409: "the checkpoint conflicts with a function of another app or kind",
             413: "the body (or one event, or the number of events) is over the limit",
             414: "the request line is too long", 431: "a request header is too long, or there are too many",
             500: "a bug; the details are in the server's log",
             503: "the store is unavailable (or full) for now; try again"}
    schema = _ref("SdkError" if sdk else "Error")
    return {str(status): _json(schema, texts[status]) for status in statuses}


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "additionalProperties": False, "properties": {"data": schema}}


def _page(item: str, cursor_pattern: str = ULID_PATTERN) -> dict[str, Any]:
    page: dict[str, Any] = {
        "type": "object", "required": ["data", "cursor", "has_more"], "additionalProperties": False,
        "properties": {"data": {"type": "array", "items": _ref(item)},
                       "cursor": {"type": ["string", "null"], "pattern": cursor_pattern},
                       "has_more": {"type": "boolean"}}}
    if item.startswith("Run"):
        if item == "RunV2":
            page["properties"]["data"]["items"] = RUN_V2_EITHER
        page["properties"]["search"] = {
            "type": "object", "required": ["scanned", "scan_budget", "errors", "first_error"],
            "additionalProperties": False,
            "description": "with `query` only: the runs read to fill this page (at most `scan_budget`; a page cut "
                           "short by it still has a cursor), and on how many of them the query failed (counted as "
                           "no match) with the first such message",
            "properties": {"scanned": {"type": "integer", "minimum": 0}, "scan_budget": {"type": "integer"},
                           "errors": {"type": "integer", "minimum": 0},
                           "first_error": {"type": ["string", "null"]}}}
    return page


def _path_param(name: str, pattern: str | None, description: str, example: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description,
            "example": example}


RUN_ID = _path_param("run_id", ULID_PATTERN, "a run id (a ULID, any case); malformed ids are 400, unknown 404",
                     EXAMPLE_RUN_ID)
FUNCTION_ID = {"name": "function_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
               "description": "a registered function's id; unknown ids are 404", "example": "wf"}
OPERATION_ID = _path_param("operation_id", ULID_PATTERN, "a bulk operation's id (a ULID); malformed ids are 400, "
                           "unknown 404", EXAMPLE_RUN_ID)
EVENT_ID = _path_param("event_id", EVENT_ID_PATTERN, "an event id; malformed ids are 400, unknown 404",
                       EXAMPLE_EVENT_ID)
WAIT = {"name": "wait", "in": "query", "required": False,
        "description": f"long poll: answer as soon as the run has ended, or when the wait runs out (then with the run "
                       f"as it is). `500ms`, `30s`, `2m`, `1m30s`, … or a bare number of seconds; at most "
                       f"{MAX_WAIT_SECONDS:g} s",
        "schema": {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d|w))+$|^[0-9]+$"},
        "example": "500ms"}


def _list_params() -> list[dict[str, Any]]:
    statuses = "|".join(_any_case(s.value) for s in RunStatus)
    return [
        {"name": "status", "in": "query", "required": False, "description": "a run status, any case",
         "schema": {"type": "string", "pattern": f"^({statuses})$"}, "example": "Completed"},
        {"name": "function_id", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "only this function's runs", "example": "POST-checkout"},
        {"name": "event_name", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "only runs started by events of this name", "example": "shop/order.created"},
        {"name": "original_run_id", "in": "query", "required": False, "schema": {"type": "string",
                                                                               "pattern": ULID_PATTERN},
         "description": "only the reruns of this run"},
        {"name": "from", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"},
         "description": "only runs created at or after this time (RFC 3339, or epoch ms)"},
        {"name": "until", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"},
         "description": "only runs created before this time (RFC 3339, or epoch ms); after `from`"},
        {"name": "query", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "a CEL condition over `event` (id, name, data, ts), `output` (a failed run's error) and "
                        "`run` (id, status, function_id, created_at, started_at, ended_at, error, original_run_id); "
                        "evaluated on at most `search.scan_budget` runs per page",
         "example": 'event.data.tenant == "acme" && run.status == "Failed"'},
        {"name": "limit", "in": "query", "required": False, "description": "page size",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}},
        {"name": "cursor", "in": "query", "required": False, "description": "the `cursor` of the previous page",
         "schema": {"type": "string", "pattern": ULID_PATTERN}},
    ]


def _event_list_params() -> list[dict[str, Any]]:
    def instant(name: str, what: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"},
                "description": f"only events received {what} this time (RFC 3339, or epoch ms)"}

    return [
        {"name": "name", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "only events of this name", "example": "shop/order.created"},
        instant("received_after", "at or after"), instant("received_before", "before"),
        {"name": "limit", "in": "query", "required": False, "description": "page size",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}},
        {"name": "cursor", "in": "query", "required": False, "description": "the `cursor` of the previous page",
         "schema": {"type": "string", "pattern": EVENT_ID_PATTERN}},
    ]


REST_SECURITY: list[dict[str, list[str]]] = [{"signingKey": []}]


def _rest(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
          errors: tuple[int, ...] = (400, 401, 404, 500), tag: str = "runs") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "security": REST_SECURITY,
                          "responses": {"200": ok, **_errors(*errors)}}
    if params:
        op["parameters"] = params
    return op


def _paths() -> dict[str, Any]:
    run_v1 = _json(_data(_ref("RunV1")), "the run")
    run_v2 = _json(_data(RUN_V2_EITHER), "the run, as an InngestRun (or its extended form)")
    steps = _json(_data({"type": "array", "items": _ref("Step")}),
                  "completed steps in the order they completed, then the others by start time")
    event = _json(_data(_ref("Event")), "the event")
    paths: dict[str, Any] = {
        "/e/{event_key}": {"post": {
            "summary": "Send one event or an array of events", "tags": ["events"], "security": [],
            "description": "Every function whose trigger matches an event starts one run of it. The whole request "
                           "is validated before anything is stored. The event key in the path is the credential "
                           "(any key in keyless dev mode).",
            "parameters": [{"name": "event_key", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "an event key of the server", "example": "dev"}],
            "requestBody": {"required": True, "content": {JSON: {"schema": {"oneOf": [
                _ref("EventIn"),
                {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS_PER_REQUEST, "items": _ref("EventIn")},
            ]}}}},
            "responses": {"200": _json(_ref("SendEventsResponse"), "stored: one id per event"),
                          **_errors(400, 401, 413, 500, sdk=True)},
        }},
        "/fn/register": {"post": {
            "summary": "Register (sync) an app's functions", "tags": ["apps"], "security": REST_SECURITY,
            "description": "stepflow's own format or the official Inngest SDKs' SynchronizeRequest. The app's "
                           "functions that the sync no longer declares are deactivated.",
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "oneOf": [_ref("SyncStepflow"), _ref("SyncInngest")]}}}},
            "responses": {"200": _json(_ref("SyncResponse"), "registered"), **_errors(400, 401, 413, 500, sdk=True)},
        }},
        "/v1/functions": {"get": _rest("The functions the server runs, sorted by id",
                                       _json(_data({"type": "array", "items": _ref("Function")}), "the functions"),
                                       errors=(401, 500), tag="functions")},
        "/v2/runs/{run_id}/rerun": {"post": {
            "summary": "Rerun a run that has ended: a new run of the function's current version for the same event",
            "tags": ["runs"], "security": REST_SECURITY,
            "description": "With `from_step`, the new run keeps the results of what came before that step (a code "
                           "function: the steps recorded before it; a workflow: its ancestors) and executes from "
                           "there. The new run's `original_run_id` names this one.",
            "parameters": [RUN_ID],
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"from_step": {"type": "string", "minLength": 1}}}}}},
            "responses": {"201": _json(_data(_ref("RunV1")), "the new run"), **_errors(400, 401, 404, 409, 413, 500)},
        }},
        "/v2/runs/{run_id}/trace": {"get": _rest(
            "The run's trace: a span tree (the run, each step attempt and call, sleeps and waits)",
            _json(_data({"type": "object", "required": ["trace_id", "root", "span_count"],
                         "additionalProperties": False,
                         "properties": {"trace_id": {"type": ["string", "null"], "pattern": "^[0-9a-f]{32}$"},
                                        "span_count": {"type": "integer", "minimum": 1},
                                        "root": _ref("Span")}}), "the trace"),
            params=[RUN_ID], errors=(400, 401, 404, 500), tag="runs")},
        "/v2/functions/{function_id}/pause": {"post": {
            "summary": "Pause a function: nothing of it executes, nothing is lost", "tags": ["functions"],
            "security": REST_SECURITY,
            "description": "New matching events are stored and start runs in status PAUSED; runs in flight show "
                           "PAUSED and stop at their next step boundary (a step executing finishes and is stored); "
                           "sleeps and waits falling due meanwhile go on after `resume`. Holds across restarts and "
                           "processes. Pausing a paused function changes nothing. A durable endpoint cannot be "
                           "paused (409): its runs execute inside the requests the app serves.",
            "parameters": [FUNCTION_ID],
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False, "properties": {}}}}},
            "responses": {"200": _json(_data({
                "type": "object", "additionalProperties": False,
                "required": ["function_id", "paused", "paused_at", "runs_paused"],
                "properties": {"function_id": {"type": "string"}, "paused": {"const": True},
                               "paused_at": {"type": "integer"}, "runs_paused": {"type": "integer"}}}),
                "the function, paused"), **_errors(400, 401, 404, 409, 413, 500)},
        }},
        "/v2/functions/{function_id}/resume": {"post": {
            "summary": "Resume a paused function: its paused runs go on in order (or are cancelled)",
            "tags": ["functions"], "security": REST_SECURITY,
            "parameters": [FUNCTION_ID],
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"cancel_paused": {"type": "boolean"}}}}}},
            "responses": {"200": _json(_data({
                "type": "object", "additionalProperties": False, "required": ["function_id", "paused"],
                "properties": {"function_id": {"type": "string"}, "paused": {"const": False},
                               "runs_resumed": {"type": "integer"}, "runs_cancelled": {"type": "integer"}}}),
                "the function, resumed"), **_errors(400, 401, 404, 413, 500)},
        }},
        "/v2/replays": {"post": {
            "summary": "Replay events into a function: a durable operation with progress", "tags": ["runs"],
            "security": REST_SECURITY,
            "description": "With `statuses`, one new run of the function's current version per run of it created "
                           "in [`from`, `to`) in one of them (the event of that run; linked by `original_run_id`); "
                           "without, one per event received in [`from`, `to`) that triggers the function "
                           "(`event_name`: only that name). Started at most `rate` a second (default 100); "
                           "survives restarts without starting a run twice.",
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False, "required": ["function_id"],
                "properties": {"function_id": {"type": "string", "minLength": 1},
                               "from": {"type": ["string", "integer"]}, "to": {"type": ["string", "integer"]},
                               "until": {"type": ["string", "integer"]},
                               "statuses": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                               "event_name": {"type": "string", "minLength": 1},
                               "rate": {"type": "integer", "minimum": 1, "maximum": 10000}}}}}},
            "responses": {"201": _json(_data(_ref("Replay")), "the operation, started"),
                          **_errors(400, 401, 404, 413, 500)},
        }},
        "/v2/replays/{operation_id}": {
            "get": _rest("A replay's progress", _json(_data(_ref("Replay")), "the operation"),
                         params=[OPERATION_ID]),
            "delete": _rest("Stop a replay (the runs it started go on)",
                            _json(_data(_ref("Replay")), "the operation"), params=[OPERATION_ID]),
        },
        "/v2/cancellations": {"post": {
            "summary": "Cancel a function's runs in bulk: a durable operation with progress", "tags": ["runs"],
            "security": REST_SECURITY,
            "description": "Cancels the function's runs created in [`from`, `until`) (until: now) that have not ended "
                           "— queued, running, sleeping, waiting or paused — and whose event satisfies `if` (CEL over "
                           "`event`). Runs a batch at a time in the background, survives restarts; a step executing "
                           "may finish, nothing after it runs.",
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False, "required": ["function_id"],
                "properties": {"function_id": {"type": "string", "minLength": 1},
                               "from": {"type": ["string", "integer"]}, "until": {"type": ["string", "integer"]},
                               "if": {"type": "string", "minLength": 1}}}}}},
            "responses": {"201": _json(_data(_ref("Cancellation")), "the operation, started"),
                          **_errors(400, 401, 404, 413, 500)},
        }},
        "/v2/cancellations/{operation_id}": {
            "get": _rest("A bulk cancel's progress", _json(_data(_ref("Cancellation")), "the operation"),
                         params=[OPERATION_ID]),
            "delete": _rest("Stop a bulk cancel (what it cancelled stays cancelled)",
                            _json(_data(_ref("Cancellation")), "the operation"), params=[OPERATION_ID]),
        },
        "/v2/functions/{function_id}/invoke": {"post": {
            "summary": "Start one run of a function with a payload, whatever its triggers", "tags": ["functions"],
            "security": REST_SECURITY,
            "description": "The run's event is `inngest/function.invoked` with the given `data`, as `step.invoke` "
                           "sends it.",
            "parameters": [FUNCTION_ID],
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"data": {"type": "object"}, "user": {"type": "object"}}}}}},
            "responses": {"201": _json(_data({"type": "object", "required": ["run_id", "event_id"],
                                              "additionalProperties": False,
                                              "properties": {"run_id": {"type": "string"},
                                                             "event_id": {"type": "string"}}}),
                                       "the run started"),
                          **_errors(400, 401, 404, 413, 500)},
        }},
        "/v1/events": {"get": _rest("List events, newest received first",
                                    _json(_page("Event", EVENT_ID_PATTERN), "a page of events"),
                                    params=_event_list_params(), errors=(400, 401, 500), tag="events")},
        "/v1/events/{event_id}": {"get": _rest("One event", event, params=[EVENT_ID], tag="events")},
        "/v1/events/{event_id}/runs": {"get": _rest(
            "The runs an event started (fan-out), oldest first",
            _json(_data({"type": "array", "items": _ref("RunV1")}), "the runs"), params=[EVENT_ID, WAIT],
            tag="events")},
        "/v1/runs": {"get": _rest("List runs, newest first", _json(_page("RunV1"), "a page of runs"),
                                  params=_list_params(), errors=(400, 401, 500))},
        "/v1/runs/{run_id}": {
            "get": _rest("One run; `?wait=` long-polls until it ends", run_v1, params=[RUN_ID, WAIT]),
            "delete": _rest("Cancel a run (a run that has ended is answered as it is)", run_v1, params=[RUN_ID]),
        },
        "/v1/runs/{run_id}/steps": {"get": _rest("Step-level state of a run", steps, params=[RUN_ID])},
        "/v1/runs/{run_id}/output": {"get": {
            "summary": "A durable endpoint's final response (the URL its async answer redirects to)",
            "tags": ["endpoints"], "security": [],
            "description": "Blocks until the run ends (up to 30 s), then replays the response the endpoint "
                           "recorded: its status, headers and body, with `X-Run-ID`. The run-scoped token is the "
                           "credential; no signing key.",
            "parameters": [RUN_ID, {"name": "token", "in": "query", "required": True, "schema": {"type": "string"},
                                    "description": "the token of the redirect URL: `<expiry>.<hex HMAC>`"}],
            "responses": {
                "202": _json(_ref("OutputStillRunning"), "the run is still going; request the URL again"),
                **_errors(400, 401, 404),
                "500": _json(_ref("OutputRunFailed"), "the run did not complete (or a server bug)"),
                "default": {"description": "the endpoint's recorded response, replayed as it was"},
            },
        }},
        "/v1/checkpoints": {"post": {
            "summary": "Checkpoints of the durable endpoints' middleware", "tags": ["endpoints"],
            "security": REST_SECURITY,
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "required": ["checkpoints"],
                "properties": {"checkpoints": {"type": "array", "items": _ref("Checkpoint")}}}}}},
            "responses": {"200": _json(_data({"type": "array", "items": _ref("CheckpointResult")}),
                                       "one result per checkpoint, in order"),
                          **_errors(400, 401, 409, 413, 500)},
        }},
        "/v1/checkpoints/idempotency": {"get": _rest(
            "The run a durable endpoint started for an idempotency key (within 24 h)",
            _json(_data(_ref("IdempotentRun")), "the run"),
            params=[{"name": "fn_id", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
                     "example": EXAMPLE_FN_ID},
                    {"name": "key", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
                     "example": EXAMPLE_IDEMPOTENCY_KEY}],
            tag="endpoints")},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (text format)", "tags": ["server"], "security": REST_SECURITY,
            "description": "Events, runs, step attempts, durations, retries, expired leases, the shared queue and "
                           "the work flow control holds (docs/observability.md). Behind the signing key like the "
                           "REST API; `--metrics-bind` serves it on a listener of its own without one.",
            "responses": {"200": {"description": "the metrics", "content": {
                "text/plain": {"schema": {"type": "string"}}}}, **_errors(401, 500)}}},
        "/health": {"get": {"summary": "Liveness", "tags": ["server"], "security": [],
                            "responses": {"200": _json({"type": "object", "required": ["status"],
                                                        "additionalProperties": False,
                                                        "properties": {"status": {"const": "ok"}}}, "up"),
                                          **_errors(500)}}},
        OPENAPI_PATH: {"get": {"summary": "This document", "tags": ["server"], "security": [],
                               "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]},
                                                          "the OpenAPI 3.1 document"), **_errors(500)}}},
    }
    for path in ("/v1/events/{event_id}", "/v1/events/{event_id}/runs", "/v1/runs", "/v1/runs/{run_id}",
                 "/v1/runs/{run_id}/steps"):
        v2 = copy.deepcopy(paths[path]["get"])
        v2["summary"] += " (v2)"
        if path in ("/v1/events/{event_id}/runs", "/v1/runs", "/v1/runs/{run_id}"):
            v2.setdefault("parameters", []).append(EXTENDED)
        if path in ("/v1/events/{event_id}/runs",):
            v2["responses"]["200"] = _json(_data({"type": "array", "items": RUN_V2_EITHER}), "the runs")
        elif path == "/v1/runs":
            v2["responses"]["200"] = _json(_page("RunV2"), "a page of runs")
        elif path == "/v1/runs/{run_id}":
            v2["responses"]["200"] = run_v2
        paths["/v2" + path[3:]] = {"get": v2}
    for path, item in paths.items():
        for method, op in item.items():
            op["operationId"] = f"{method.upper()} {path}"
            sdk = path in SDK_PATHS
            # refused by the HTTP layer before routing (stepflow.server.http_protocol), or by the store
            extra = (408, 414, 431, 503) if path not in (OPENAPI_PATH, "/health") else (408, 414, 431)
            for status, response in _errors(*extra, sdk=sdk).items():
                op["responses"].setdefault(status, response)
    return paths


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once; treat it as read-only)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stepflow",
            "version": "1",
            "description": "The event API, the REST API v1/v2, the SDK sync and the durable endpoints' checkpoint "
                           "API of a stepflow server (docs/rest-api.md, docs/endpoints.md). REST errors are "
                           "`{\"error\": {\"code\", \"message\"}}`; the routes the official Inngest SDKs call "
                           "answer `{\"error\": \"<message>\", \"code\", \"status\"}`. A server in keyless dev mode "
                           "accepts any caller.",
        },
        "servers": [{"url": "http://127.0.0.1:8288"}],
        "paths": _paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"signingKey": {
                "type": "http", "scheme": "bearer",
                "description": "the server's signing key (or its fallback during a rotation); not needed by a "
                               "keyless dev server"}},
        },
    }


async def serve(request: web.Request) -> web.Response:
    return json_response(document())


def setup(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, serve)
