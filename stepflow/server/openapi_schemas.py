"""The OpenAPI document's schemas (`components.schemas`) and the names both halves of the document share;
stepflow/server/openapi.py builds the paths and serves the whole."""

from __future__ import annotations

from typing import Any

from stepflow.events import MAX_DATA_DEPTH, MAX_EVENT_BYTES
from stepflow.store.records import RunStatus, StepStatus

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


def schemas() -> dict[str, Any]:
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
