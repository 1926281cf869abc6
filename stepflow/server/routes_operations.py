"""Bulk operations over REST: `POST /v2/cancellations` starts a durable bulk cancel, `GET` follows its progress,
`DELETE` stops it (engine/operations.py runs it)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stepflow import codec
from stepflow.errors import InvalidRequestError, NotFoundError
from stepflow.ids import is_ulid, now_ms
from stepflow.server.app import ENGINE_KEY, json_response, read_body
from stepflow.server.routes_rest import parse_instant
from stepflow.server.serialize import iso
from stepflow.store.records import OperationRecord

CANCELLATION_FIELDS = {"function_id", "from", "until", "if"}


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
    raw = await read_body(request)
    try:
        body = codec.loads(raw) if raw.strip() else None
    except codec.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or set(body) - CANCELLATION_FIELDS:
        raise InvalidRequestError('expected {"function_id": "...", "from"?: time, "until"?: time, "if"?: "CEL"}')
    function_id, condition = body.get("function_id"), body.get("if")
    if not isinstance(function_id, str) or not function_id:
        raise InvalidRequestError("'function_id' is required: the function whose runs to cancel")
    if condition is not None and (not isinstance(condition, str) or not condition.strip()):
        raise InvalidRequestError("'if' must be a CEL expression over `event`, e.g. \"event.data.plan == 'free'\"")
    times: dict[str, str] = {}
    for name in ("from", "until"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise InvalidRequestError(f"{name!r} must be an RFC 3339 time or epoch milliseconds")
        if value is not None:
            times[name] = str(value)
    op = await request.app[ENGINE_KEY].cancel_many(function_id, created_from=parse_instant(times, "from"),
                                                   created_until=parse_instant(times, "until"),
                                                   condition=condition)
    return json_response({"data": operation_v2(op)}, status=201)


async def _operation(request: web.Request) -> str:
    operation_id = request.match_info["operation_id"]
    if not is_ulid(operation_id):
        raise InvalidRequestError(f"{operation_id!r} is not a cancellation id")
    return operation_id.upper()


async def get_cancellation(request: web.Request) -> web.Response:
    operation_id = await _operation(request)
    op = await request.app[ENGINE_KEY].store.get_operation(operation_id)
    if op is None or op.kind != "cancel":
        raise NotFoundError(f"cancellation {operation_id} not found")
    return json_response({"data": operation_v2(op)})


async def stop_cancellation(request: web.Request) -> web.Response:
    """Stop a bulk cancel: the runs it cancelled stay cancelled; no more are."""
    operation_id = await _operation(request)
    op = await request.app[ENGINE_KEY].store.stop_operation(operation_id, now_ms())
    if op is None or op.kind != "cancel":
        raise NotFoundError(f"cancellation {operation_id} not found")
    return json_response({"data": operation_v2(op)})


def setup(app: web.Application) -> None:
    app.router.add_post("/v2/cancellations", create_cancellation)
    app.router.add_get("/v2/cancellations/{operation_id}", get_cancellation)
    app.router.add_delete("/v2/cancellations/{operation_id}", stop_cancellation)
