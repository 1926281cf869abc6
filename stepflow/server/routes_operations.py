"""Bulk operations over REST: `POST /v2/cancellations` starts a durable bulk cancel and `POST /v2/replays` a
durable replay; `GET /v2/…/{id}` follows its progress, `DELETE` stops it (engine/operations.py runs them)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stepflow.errors import InvalidRequestError, NotFoundError
from stepflow.ids import is_ulid, now_ms
from stepflow.server.app import ENGINE_KEY, json_response, read_json_object
from stepflow.server.routes_rest import parse_instant
from stepflow.server.serialize import iso
from stepflow.store.records import OperationRecord, RunStatus

CANCELLATION_FIELDS = {"function_id", "from", "until", "to", "if"}
REPLAY_FIELDS = {"function_id", "from", "until", "to", "statuses", "event_name", "rate"}
NOUNS = {"cancel": "cancellation", "replay": "replay"}


def operation_v2(op: OperationRecord) -> dict[str, Any]:
    until = op.params.get("until")
    return {"id": op.id, "kind": op.kind, "function_id": op.function_id, "status": op.status.value,
            "from": iso(op.params["from"]) if op.params.get("from") is not None else None,
            "until": iso(until) if until is not None else None, "if": op.params.get("if"),
            "total": op.total, "processed": op.processed, "cancelled": op.succeeded, "skipped": op.skipped,
            "created_at": iso(op.created_at), "ended_at": iso(op.ended_at)}


async def create_cancellation(request: web.Request) -> web.Response:
    """`{"function_id", "from"?, "until"?, "if"?}`: cancel the function's runs created in [from, until) that have
    not ended and whose event satisfies `if` (CEL over `event`)."""
    body = await _body(request, CANCELLATION_FIELDS,
                       '{"function_id": "...", "from"?: time, "until"?: time, "if"?: "CEL"}')
    condition = body.get("if")
    if condition is not None and (not isinstance(condition, str) or not condition.strip()):
        raise InvalidRequestError("'if' must be a CEL expression over `event`, e.g. \"event.data.plan == 'free'\"")
    created_from, created_until = _times(body)
    op = await request.app[ENGINE_KEY].cancel_many(body["function_id"], created_from=created_from,
                                                   created_until=created_until, condition=condition)
    return json_response({"data": operation_v2(op)}, status=201)


async def create_replay(request: web.Request) -> web.Response:
    """`{"function_id", "from"?, "to"?, "statuses"?: ["Failed", …], "event_name"?, "rate"?}`."""
    body = await _body(request, REPLAY_FIELDS, '{"function_id": "...", "from"?: time, "to"?: time, '
                                               '"statuses"?: ["Failed", ...], "event_name"?: "...", "rate"?: n}')
    statuses = body.get("statuses")
    parsed: list[RunStatus] = []
    if statuses is not None:
        if not isinstance(statuses, list) or not statuses or not all(isinstance(x, str) for x in statuses):
            raise InvalidRequestError("'statuses' must be a non-empty list of run statuses, e.g. [\"Failed\"]")
        for name in statuses:
            try:
                parsed.append(RunStatus(name.upper()))
            except ValueError:
                raise InvalidRequestError(f"unknown status {name!r}; one of "
                                          + ", ".join(x.v1_name for x in RunStatus)) from None
    event_name, rate = body.get("event_name"), body.get("rate")
    if event_name is not None and (not isinstance(event_name, str) or not event_name):
        raise InvalidRequestError("'event_name' must be an event name")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)):
        raise InvalidRequestError("'rate' must be a whole number of runs a second")
    created_from, created_until = _times(body)
    op = await request.app[ENGINE_KEY].replay(body["function_id"], created_from=created_from,
                                              created_until=created_until, statuses=parsed or None,
                                              event_name=event_name, rate=rate)
    return json_response({"data": await _with_runs(request, op)}, status=201)


async def _body(request: web.Request, fields: set[str], shape: str) -> dict[str, Any]:
    body = await read_json_object(request, fields, shape, required=True)
    function_id = body.get("function_id")
    if not isinstance(function_id, str) or not function_id:
        raise InvalidRequestError("'function_id' is required: the function to act on")
    return body


def _times(body: dict[str, Any]) -> tuple[int | None, int | None]:
    times: dict[str, str] = {}
    for name in ("from", "until", "to"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise InvalidRequestError(f"{name!r} must be an RFC 3339 time or epoch milliseconds")
        if value is not None:
            times[name] = str(value)
    if "to" in times:
        if "until" in times:
            raise InvalidRequestError("give 'to' or 'until', not both")
        times["until"] = times.pop("to")
    return parse_instant(times, "from"), parse_instant(times, "until")


async def _with_runs(request: web.Request, op: OperationRecord) -> dict[str, Any]:
    """A replay with what became of the runs it started."""
    counts = await request.app[ENGINE_KEY].store.operation_run_counts(op.id)
    out = operation_v2(op)
    out.pop("cancelled")
    out.pop("if")
    out.update(started=op.succeeded, completed=counts.get(RunStatus.COMPLETED, 0),
               failed=counts.get(RunStatus.FAILED, 0), statuses=op.params.get("statuses"),
               event_name=op.params.get("event_name"))
    return out


async def _operation(request: web.Request) -> str:
    operation_id = request.match_info["operation_id"]
    if not is_ulid(operation_id):
        raise InvalidRequestError(f"{operation_id!r} is not a cancellation id")
    return operation_id.upper()


async def _load(request: web.Request, kind: str, stop: bool) -> OperationRecord:
    operation_id = request.match_info["operation_id"]
    if not is_ulid(operation_id):
        raise InvalidRequestError(f"{operation_id!r} is not a {NOUNS[kind]} id")
    store = request.app[ENGINE_KEY].store
    op = await (store.stop_operation(operation_id.upper(), now_ms()) if stop else store.get_operation(
        operation_id.upper()))
    if op is None or op.kind != kind:
        raise NotFoundError(f"{NOUNS[kind]} {operation_id} not found")
    return op


async def get_cancellation(request: web.Request) -> web.Response:
    return json_response({"data": operation_v2(await _load(request, "cancel", stop=False))})


async def stop_cancellation(request: web.Request) -> web.Response:
    """Stop a bulk cancel: the runs it cancelled stay cancelled; no more are."""
    return json_response({"data": operation_v2(await _load(request, "cancel", stop=True))})


async def get_replay(request: web.Request) -> web.Response:
    return json_response({"data": await _with_runs(request, await _load(request, "replay", stop=False))})


async def stop_replay(request: web.Request) -> web.Response:
    """Stop a replay: the runs it started go on; no more are started."""
    return json_response({"data": await _with_runs(request, await _load(request, "replay", stop=True))})


async def pause_function(request: web.Request) -> web.Response:
    """`POST /v2/functions/{function_id}/pause`: new runs are stored PAUSED, runs in flight stop at their next
    step boundary. Pausing a paused function changes nothing."""
    await _empty_object(request, set())
    return json_response({"data": await request.app[ENGINE_KEY].pause_function(request.match_info["function_id"])})


async def resume_function(request: web.Request) -> web.Response:
    """`POST /v2/functions/{function_id}/resume {"cancel_paused"?: bool}`."""
    body = await _empty_object(request, {"cancel_paused"})
    cancel_paused = body.get("cancel_paused", False)
    if not isinstance(cancel_paused, bool):
        raise InvalidRequestError("'cancel_paused' must be true or false")
    return json_response({"data": await request.app[ENGINE_KEY].resume_function(
        request.match_info["function_id"], cancel_paused=cancel_paused)})


async def _empty_object(request: web.Request, fields: set[str]) -> dict[str, Any]:
    return await read_json_object(request, fields, "{" + ", ".join(f'"{f}"?: ...' for f in sorted(fields)) + "}")


def setup(app: web.Application) -> None:
    app.router.add_post("/v2/functions/{function_id}/pause", pause_function)
    app.router.add_post("/v2/functions/{function_id}/resume", resume_function)
    app.router.add_post("/v2/replays", create_replay)
    app.router.add_get("/v2/replays/{operation_id}", get_replay)
    app.router.add_delete("/v2/replays/{operation_id}", stop_replay)
    app.router.add_post("/v2/cancellations", create_cancellation)
    app.router.add_get("/v2/cancellations/{operation_id}", get_cancellation)
    app.router.add_delete("/v2/cancellations/{operation_id}", stop_cancellation)
