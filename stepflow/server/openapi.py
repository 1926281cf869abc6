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

from stepflow.events import MAX_DATA_DEPTH, MAX_EVENT_BYTES, MAX_EVENTS_PER_REQUEST
from stepflow.server.app import json_response
from stepflow.server.routes_rest import MAX_PAGE, MAX_WAIT_SECONDS
from stepflow.store.records import RunStatus, StepStatus

OPENAPI_PATH = "/openapi.json"

JSON = "application/json"
SDK_PATHS = ("/e/{event_key}", "/fn/register")   # answer errors in the shape the official Inngest SDKs parse
ULID_PATTERN = "^[0-9A-HJKMNP-TVW-Za-hjkmnp-tvw-z]{26}$"
EVENT_ID_PATTERN = "^[A-Za-z0-9._:\\-]{1,128}$"
# the examples of docs/rest-api.md; tests/test_fuzz_api.py seeds its server with records of these ids
EXAMPLE_RUN_ID = "01M7YMF5T93TC44BZ81MWT604Q"
EXAMPLE_EVENT_ID = "upload-77"
EXAMPLE_FN_ID = "POST /checkout"
EXAMPLE_IDEMPOTENCY_KEY = "order-1234"

# The InngestRun JSON Schema (runtimes/schemas/inngest-run.schema.json, without its $schema/$id): the v2 run
# object. A copy, because runtimes/ is not installed with the package; tests/test_openapi.py compares the two.
INNGEST_RUN_SCHEMA: dict[str, Any] = {
    "title": "InngestRun",
    "description": "A function run on the Inngest platform. Represents one durable execution of a function for "
                   "a given trigger event, including step-level state and outputs.",
    "type": "object",
    "required": ["run_id", "function_id", "status"],
    "additionalProperties": False,
    "properties": {
        "run_id": {"type": "string", "description": "Unique identifier for the function run."},
        "function_id": {"type": "string", "description": "Identifier of the deployed function being executed."},
        "app_id": {"type": "string", "description": "Identifier of the Inngest app that owns the function."},
        "status": {"type": "string", "enum": ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "PAUSED"],
                   "description": "Lifecycle status of the run."},
        "event_id": {"type": "string", "description": "Identifier of the event that triggered the run."},
        "output": {"type": "object", "description": "Final output emitted by the function on completion.",
                   "additionalProperties": True},
        "started_at": {"type": "string", "format": "date-time"},
        "ended_at": {"type": "string", "format": "date-time"},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# a v2 run: the strict InngestRun, or with `?extended=true` its superset (anyOf: a strict object is both)
RUN_V2_EITHER = {"anyOf": [_ref("RunV2"), _ref("RunV2Extended")]}
EXTENDED = {"name": "extended", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
            "description": "true: each run also has `function_version`, `created_at`, `error` and "
                           "`original_run_id` (no longer valid against the strict InngestRun schema)"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _any_case(word: str) -> str:
    return "".join(f"[{ch.upper()}{ch.lower()}]" for ch in word)


TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO 8601 UTC with milliseconds",
             "examples": ["2026-11-21T08:44:24.778Z"]}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}


def _schemas() -> dict[str, Any]:
    v1_statuses = [s.v1_name for s in RunStatus]
    event_fields = {
        "name": {"type": "string", "minLength": 1, "maxLength": 256, "description": "not blank"},
        "data": {"type": ["object", "null"], "description": f"`null` counts as `{{}}`; at most {MAX_DATA_DEPTH} "
                                                             "levels of nested objects and arrays"},
        "id": {"type": ["string", "null"], "pattern": EVENT_ID_PATTERN,
               "description": "your id for the event (deduplicated within 24 h); `null` or absent: a ULID is made"},
        "ts": {"type": ["integer", "null"], "minimum": 0, "maximum": 2 ** 63 - 1,
               "description": "milliseconds since the epoch; default: when the server received it"},
        "user": {"type": ["object", "null"]},
        "v": {"type": ["string", "null"], "description": "a version string for the event's schema"},
    }
    return {
        "Error": {
            "description": "The error shape of the REST API (`/v1`, `/v2`, `/health`, `/openapi.json`).",
            "type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {
                "type": "object", "required": ["code", "message"], "additionalProperties": False,
                "properties": {"code": {"type": "string", "examples": ["invalid_request", "unauthorized",
                                                                       "not_found", "payload_too_large"]},
                               "message": {"type": "string"}}}},
        },
        "SdkError": {
            "description": "The error shape of the routes the official Inngest SDKs call (`/e/{event_key}`, "
                           "`/fn/register`): `error` is the message, as their clients parse it.",
            "type": "object", "required": ["error", "code", "status"], "additionalProperties": False,
            "properties": {"error": {"type": "string"}, "code": {"type": "string"},
                           "status": {"type": "integer", "minimum": 400, "maximum": 599}},
        },
        "EventIn": {
            "description": f"One event. At most {MAX_EVENT_BYTES} bytes as compact JSON; no other field.",
            "type": "object", "required": ["name"], "additionalProperties": False, "properties": event_fields,
            "example": {"name": "imports/csv.uploaded", "data": {"file": "http://127.0.0.1:9000/files/upload.csv"}},
        },
        "SendEventsResponse": {
            "type": "object", "required": ["ids", "status"], "additionalProperties": False,
            "properties": {"ids": {"type": "array", "items": {"type": "string"},
                                   "description": "one id per event, in the order sent"},
                           "status": {"const": 200}},
        },
        "Cancellation": {
            "description": "A durable bulk cancel and its progress: `total` runs had not ended when it was created; "
                           "`cancelled` and `skipped` (its `if` was false) add up to `processed`.",
            "type": "object", "additionalProperties": False,
            "required": ["id", "kind", "function_id", "status", "from", "until", "if", "total", "processed",
                         "cancelled", "skipped", "created_at", "ended_at"],
            "properties": {"id": {"type": "string", "pattern": ULID_PATTERN}, "kind": {"const": "cancel"},
                           "function_id": {"type": "string"},
                           "status": {"enum": ["Running", "Completed", "Cancelled"]},
                           "from": NULLABLE_TIMESTAMP, "until": NULLABLE_TIMESTAMP,
                           "if": {"type": ["string", "null"]},
                           "total": {"type": "integer", "minimum": 0}, "processed": {"type": "integer", "minimum": 0},
                           "cancelled": {"type": "integer", "minimum": 0}, "skipped": {"type": "integer", "minimum": 0},
                           "created_at": TIMESTAMP, "ended_at": NULLABLE_TIMESTAMP},
        },
        "Replay": {
            "description": "A durable replay and its progress: `total` candidates (runs in the statuses, or events "
                           "in the range); `started` and `skipped` (the function's triggers do not match the event) "
                           "add up to `processed`; `completed` and `failed` count the started runs by how they "
                           "ended.",
            "type": "object", "additionalProperties": False,
            "required": ["id", "kind", "function_id", "status", "from", "until", "statuses", "event_name", "total",
                         "processed", "started", "skipped", "completed", "failed", "created_at", "ended_at"],
            "properties": {"id": {"type": "string", "pattern": ULID_PATTERN}, "kind": {"const": "replay"},
                           "function_id": {"type": "string"},
                           "status": {"enum": ["Running", "Completed", "Cancelled"]},
                           "from": NULLABLE_TIMESTAMP, "until": NULLABLE_TIMESTAMP,
                           "statuses": {"type": ["array", "null"], "items": {"type": "string"}},
                           "event_name": {"type": ["string", "null"]},
                           **{k: {"type": "integer", "minimum": 0} for k in
                              ("total", "processed", "started", "skipped", "completed", "failed")},
                           "created_at": TIMESTAMP, "ended_at": NULLABLE_TIMESTAMP},
        },
        "Event": {
            "description": "The event as sent (`user`, `v` only when given) and when the server stored it.",
            "type": "object", "required": ["id", "name", "data", "ts", "received_at"], "additionalProperties": False,
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "data": {"type": "object"},
                           "ts": {"type": "integer"}, "user": {"type": "object"}, "v": {"type": "string"},
                           "received_at": TIMESTAMP,
                           "skipped": {"type": "array", "description": "`GET /v1/events/{id}` only: the functions "
                                                                       "whose flow control started no run for it",
                                       "items": {"type": "object", "additionalProperties": False,
                                                 "required": ["function_id", "reason", "message", "at"],
                                                 "properties": {
                                                     "function_id": {"type": "string"},
                                                     "reason": {"enum": ["rate_limit", "debounce", "singleton"]},
                                                     "message": {"type": "string"}, "at": TIMESTAMP}}}},
        },
        "RunV1": {
            "description": "A run in the field names of Inngest's REST API v1.",
            "type": "object", "additionalProperties": False,
            "required": ["run_id", "run_started_at", "function_id", "function_version", "environment_id",
                         "event_id", "status", "ended_at", "output"],
            "properties": {
                "run_id": {"type": "string", "pattern": ULID_PATTERN},
                "run_started_at": {**TIMESTAMP, "description": "when the first step started (while Queued: "
                                                               "when the run was created)"},
                "function_id": {"type": "string"},
                "function_version": {"type": "integer"},
                "environment_id": {"type": "string"},
                "event_id": {"type": ["string", "null"]},
                "status": {"type": "string", "enum": v1_statuses},
                "ended_at": _nullable(TIMESTAMP),
                "output": {"description": "the run's output once Completed (any JSON value), else null"},
                "error": {"type": "object", "description": "only when Failed: the failing step's error and its "
                                                           "`step_id` (or an `expression_error`)"},
                "original_run_id": {"type": "string", "pattern": ULID_PATTERN,
                                    "description": "only for a rerun: the run it repeats"},
                "waiting": {"type": "string", "description": "`GET /v1/runs/{id}` of a run flow control holds: "
                                                             "why (docs/flow-control.md)"},
            },
        },
        "Span": {
            "type": "object", "additionalProperties": False,
            "required": ["span_id", "parent_id", "name", "start", "end", "status", "attributes", "children"],
            "properties": {
                "span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                "parent_id": {"type": ["string", "null"]}, "name": {"type": "string"},
                "start": TIMESTAMP, "end": _nullable(TIMESTAMP), "status": {"enum": ["ok", "error"]},
                "attributes": {"type": "object"},
                "children": {"type": "array", "items": {"$ref": "#/components/schemas/Span"}},
            },
        },
        "RunV2": INNGEST_RUN_SCHEMA,
        "RunV2Extended": {
            **INNGEST_RUN_SCHEMA, "title": "InngestRun, extended",
            "description": "`?extended=true`: the InngestRun fields and those its schema has no room for",
            "properties": {
                **INNGEST_RUN_SCHEMA["properties"],
                "function_version": {"type": "integer", "minimum": 1},
                "created_at": {"type": "string", "format": "date-time"},
                "error": {"type": "object", "description": "only when FAILED: the failing step's error"},
                "original_run_id": {"type": "string", "pattern": ULID_PATTERN,
                                    "description": "only for a rerun: the run it repeats"},
            },
        },
        "Step": {
            "type": "object", "additionalProperties": False,
            "required": ["step_id", "status", "attempts", "scheduled_at", "started_at", "ended_at", "output",
                         "error"],
            "properties": {
                "step_id": {"type": "string"},
                "status": {"type": "string", "enum": [s.value for s in StepStatus]},
                "attempts": {"type": "integer", "minimum": 0},
                "scheduled_at": _nullable(TIMESTAMP),
                "started_at": _nullable(TIMESTAMP),
                "ended_at": _nullable(TIMESTAMP),
                "output": {"description": "the stored Response {status, body} once completed (for SDK steps: "
                                          "the step's value)"},
                "error": {"type": ["object", "null"], "description": "the last error, or why the step was skipped"},
                "kind": {"type": "string", "description": "SDK code-function steps only: what kind of step"},
                "hashed_id": {"type": "string", "description": "SDK code-function steps only: the step's hashed id"},
                "logs": {"type": "string", "description": "what the step printed, when captured"},
                "waiting": {"type": "string", "description": "why the step waits, when flow control holds it"},
            },
        },
        "Function": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "name", "app_id", "version", "kind", "triggers", "source", "durable_endpoint",
                         "flow_control", "paused", "paused_at"],
            "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "app_id": {"type": "string"},
                "version": {"type": "integer", "minimum": 1},
                "kind": {"type": "string", "enum": ["workflow", "code"]},
                "durable_endpoint": {"type": "boolean",
                                     "description": "a durable endpoint's function (its runs are its requests)"},
                "flow_control": {"type": "object", "description": "its concurrency, throttle, rate_limit, "
                                                                  "debounce, singleton and priority, as declared "
                                                                  "(docs/flow-control.md); {} when none"},
                "paused": {"type": "boolean", "description": "paused with `POST /v2/functions/{id}/pause`"},
                "paused_at": {"type": ["string", "null"], "format": "date-time"},
                "triggers": {"type": "array", "items": {"oneOf": [
                    {"type": "object", "required": ["event"], "additionalProperties": False,
                     "properties": {"event": {"type": "string"}, "if": {"type": "string"}}},
                    {"type": "object", "required": ["cron"], "additionalProperties": False,
                     "properties": {"cron": {"type": "string"}}},
                ]}},
                "source": {"type": ["string", "null"], "description": "where the definition came from"},
            },
        },
        "SyncStepflow": {
            "description": "stepflow's own sync format (docs/sdk.md): function definitions as in workflow files.",
            "type": "object", "required": ["app_id", "functions"],
            "properties": {"app_id": {"type": "string", "minLength": 1}, "url": {"type": ["string", "null"]},
                           "functions": {"type": "array", "items": {
                               "type": "object", "required": ["id"],
                               "description": "a function definition (docs/workflows.md, docs/sdk.md); its "
                                              "app_id, if given, must be the sync's"}}},
        },
        "SyncInngest": {
            "description": "The SynchronizeRequest the official Inngest SDKs send (recognised by `appName`, "
                           "`appname`, `deployType` or `framework`).",
            "type": "object", "required": ["appName"],
            "properties": {
                "appName": {"type": "string", "minLength": 1}, "url": {"type": "string"},
                "deployType": {"type": "string"}, "framework": {"type": "string"},
                "sdk": {"type": "string"}, "v": {"type": "string"},
                "functions": {"type": ["array", "null"], "items": {
                    "type": "object", "required": ["id", "steps"],
                    "properties": {
                        "id": {"type": "string", "minLength": 1}, "name": {"type": "string"},
                        "triggers": {"type": ["array", "null"], "items": {"type": "object"}},
                        "steps": {"type": "object", "minProperties": 1, "maxProperties": 1,
                                  "additionalProperties": {
                                      "type": "object", "required": ["runtime"],
                                      "properties": {"runtime": {
                                          "type": "object", "required": ["url"],
                                          "properties": {"type": {"const": "http"}, "url": {"type": "string"}}}}}},
                    }}},
            },
        },
        "SyncResponse": {
            "type": "object", "additionalProperties": False,
            "required": ["ok", "status", "modified", "app_id", "functions", "removed"],
            "properties": {
                "ok": {"const": True}, "status": {"const": 200}, "modified": {"type": "boolean"},
                "app_id": {"type": "string"},
                "functions": {"type": "array", "items": {
                    "type": "object", "required": ["id", "version"], "additionalProperties": False,
                    "properties": {"id": {"type": "string"}, "version": {"type": "integer", "minimum": 1}}}},
                "removed": {"type": "array", "items": {"type": "string"},
                            "description": "the app's functions this sync no longer declares (deactivated)"},
            },
        },
        "Checkpoint": {
            "description": "One checkpoint of a durable endpoint's middleware (stepflow/engine/endpoints.py). "
                           "Every checkpoint is idempotent.",
            "oneOf": [
                {"type": "object", "required": ["op", "run_id", "fn_id", "app_id", "url"],
                 "properties": {"op": {"const": "run"}, "run_id": {"type": "string", "pattern": ULID_PATTERN},
                                "fn_id": {"type": "string", "minLength": 1},
                                "app_id": {"type": "string", "minLength": 1},
                                "url": {"type": "string", "minLength": 1},
                                "method": {"type": "string"},
                                "event": {"type": "object", "properties": {"data": {"type": "object"}}},
                                "idempotency": {"type": "string"},
                                "traceparent": {"type": ["string", "null"],
                                                "description": "the request's W3C trace context"},
                                "started_at": {"type": "integer", "minimum": 0,
                                               "description": "milliseconds since the epoch"}}},
                {"type": "object", "required": ["op", "run_id", "steps"],
                 "properties": {"op": {"const": "steps"}, "run_id": {"type": "string", "pattern": ULID_PATTERN},
                                "steps": {"type": "array", "items": {
                                    "type": "object", "required": ["op", "id"],
                                    "properties": {"op": {"const": "StepRun"}, "id": {"type": "string"},
                                                   "displayName": {"type": "string"}, "data": {},
                                                   "logs": {"type": "string"},
                                                   "timing": {"type": "object", "properties": {
                                                       "start": {"type": "integer"},
                                                       "end": {"type": "integer"}}}}}}}},
                {"type": "object", "required": ["op", "run_id", "ops"],
                 "properties": {"op": {"const": "async"}, "run_id": {"type": "string", "pattern": ULID_PATTERN},
                                "ops": {"type": "array", "items": {"type": "object"},
                                        "description": "the SDK ops the handler reached (Sleep, WaitForEvent, "
                                                       "StepError, StepPlanned, …)"},
                                "attempt": {"type": "integer", "minimum": 0},
                                "started_at": {"type": "integer", "minimum": 0}}},
                {"type": "object", "required": ["op", "run_id", "result"],
                 "properties": {"op": {"const": "response"}, "run_id": {"type": "string", "pattern": ULID_PATTERN},
                                "result": {"type": "object", "required": ["status_code"], "properties": {
                                    "status_code": {"type": "integer", "minimum": 100, "maximum": 599},
                                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "body": {"type": "string"},
                                    "body_encoding": {"enum": ["base64"]},
                                    "duration_ms": {"type": "integer", "minimum": 0}}}}},
            ],
        },
        "CheckpointResult": {
            "oneOf": [
                {"type": "object", "required": ["op", "run_id", "function_id", "created"],
                 "additionalProperties": False,
                 "properties": {"op": {"const": "run"}, "run_id": {"type": "string"},
                                "function_id": {"type": "string"}, "created": {"type": "boolean"}}},
                {"type": "object", "required": ["op", "run_id", "known"], "additionalProperties": False,
                 "properties": {"op": {"enum": ["steps", "response"]}, "run_id": {"type": "string"},
                                "known": {"type": "boolean"}}},
                {"type": "object", "required": ["op", "run_id"], "additionalProperties": False,
                 "properties": {"op": {"const": "async"}, "run_id": {"type": "string"}}},
            ],
        },
        "IdempotentRun": {
            "type": "object", "required": ["run_id", "status", "output"], "additionalProperties": False,
            "properties": {"run_id": {"type": "string"}, "status": {"type": "string", "enum": v1_statuses},
                           "output": {}},
        },
        "OutputStillRunning": {
            "type": "object", "required": ["status", "run_id", "message"], "additionalProperties": False,
            "properties": {"status": {"type": "string", "enum": v1_statuses}, "run_id": {"type": "string"},
                           "message": {"type": "string"}},
        },
        "OutputRunFailed": {
            "type": "object", "required": ["error", "run_id"], "additionalProperties": False,
            "properties": {"error": {
                "type": "object", "required": ["code", "message"], "additionalProperties": False,
                "properties": {"code": {"const": "run_failed"}, "message": {"type": "string"}}},
                "run_id": {"type": "string"}},
        },
    }


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
            "schemas": _schemas(),
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
