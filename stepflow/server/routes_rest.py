"""REST API v1 (Inngest's field names) and v2 (the InngestRun JSON Schema)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from stepflow.durations import parse_duration
from stepflow.engine.run_search import SCAN_BUDGET, RunFilter, list_runs
from stepflow.errors import InvalidRequestError, NotFoundError
from stepflow.ids import is_ulid, is_valid_event_id, now_ms
from stepflow.observability.tracing import span_tree
from stepflow.server.app import ENGINE_KEY, SETTINGS_KEY, json_response, read_json_object
from stepflow.server.serialize import describe_waiting, event_v1, iso, run_v1, run_v2, step_v1
from stepflow.store.records import RunRecord, RunStatus

MAX_WAIT_SECONDS = 300.0
MAX_PAGE = 500


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    if not is_ulid(run_id):
        raise InvalidRequestError(f"{run_id!r} is not a run id (run ids are 26-character ULIDs)")
    return run_id.upper()


def _event_id(request: web.Request) -> str:
    event_id = request.match_info["event_id"]
    if not is_valid_event_id(event_id):
        raise InvalidRequestError(f"{event_id!r} is not a valid event id")
    return event_id


async def _load_run(request: web.Request, run_id: str) -> RunRecord:
    engine = request.app[ENGINE_KEY]
    wait = _wait_seconds(request)
    if wait is not None:
        run = await engine.wait_for_run(run_id, wait)
    else:
        run = await engine.store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} not found")
    return run


async def _event_runs(request: web.Request) -> list[RunRecord]:
    """The event's runs; with `?wait=30s`, once all of them have ended (or the wait is over)."""
    engine = request.app[ENGINE_KEY]
    event_id = _event_id(request)
    runs = await engine.store.get_event_runs(event_id)
    if not runs and await engine.store.get_event(event_id) is None:
        raise NotFoundError(f"event {event_id} not found")
    wait = _wait_seconds(request)
    if wait:
        deadline = time.monotonic() + wait
        for run in runs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not run.status.is_terminal:
                await engine.wait_for_run(run.id, remaining)
        runs = await engine.store.get_event_runs(event_id)
    return runs


def _wait_seconds(request: web.Request) -> float | None:
    wait_param = request.query.get("wait")
    if not wait_param:
        return None
    try:
        wait = parse_duration(wait_param if not (wait_param.isascii() and wait_param.isdigit()) else f"{wait_param}s")
    except ValueError as exc:
        raise InvalidRequestError(f"'wait': {exc}") from exc
    if wait > MAX_WAIT_SECONDS:
        raise InvalidRequestError(f"'wait' may be at most {MAX_WAIT_SECONDS:g}s")
    return wait


async def get_event(request: web.Request) -> web.Response:
    event_id = _event_id(request)
    store = request.app[ENGINE_KEY].store
    event = await store.get_event(event_id)
    if event is None:
        raise NotFoundError(f"event {event_id} not found")
    out = event_v1(event)
    # the functions it started no run of, because of their flow control (rate limit, debounce, singleton)
    out["skipped"] = [{**skip, "at": iso(skip["at"])} for skip in await store.get_event_skips(event_id)]
    return json_response({"data": out})


async def get_event_runs_v1(request: web.Request) -> web.Response:
    env = request.app[SETTINGS_KEY].environment_id
    return json_response({"data": [run_v1(r, env) for r in await _event_runs(request)]})


async def get_run_v1(request: web.Request) -> web.Response:
    run = await _load_run(request, _run_id(request))
    out = run_v1(run, request.app[SETTINGS_KEY].environment_id)
    if not run.status.is_terminal:
        # why it is not executing, when flow control holds it (docs/flow-control.md)
        waiting = await request.app[ENGINE_KEY].store.run_waiting(run.id, now_ms())
        if waiting:
            out["waiting"] = describe_waiting(next(iter(waiting.values())))
    return json_response({"data": out})


async def get_run_steps(request: web.Request) -> web.Response:
    run_id = _run_id(request)
    store = request.app[ENGINE_KEY].store
    run = await store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} not found")
    waiting = await store.run_waiting(run_id, now_ms()) if not run.status.is_terminal else {}
    steps = []
    for record in await store.get_run_steps(run_id):
        step = step_v1(record)
        if record.step_id in waiting:
            step["waiting"] = describe_waiting(waiting[record.step_id])
        steps.append(step)
    return json_response({"data": steps})


async def cancel_run(request: web.Request) -> web.Response:
    run_id = _run_id(request)
    run = await request.app[ENGINE_KEY].store.cancel_run(run_id, now_ms())
    if run is None:
        raise NotFoundError(f"run {run_id} not found")
    request.app[ENGINE_KEY].watcher.notify(run_id)
    return json_response({"data": run_v1(run, request.app[SETTINGS_KEY].environment_id)})


async def rerun_run(request: web.Request) -> web.Response:
    """`POST /v2/runs/{run_id}/rerun {"from_step"?: step id}`: a new run of the same event, linked to this one."""
    run_id = _run_id(request)
    shape = '{"from_step"?: "<step id>"}'
    payload = await read_json_object(request, {"from_step"}, shape)
    if not isinstance(payload.get("from_step", ""), str):
        raise InvalidRequestError(f"expected {shape}")
    rerun = await request.app[ENGINE_KEY].rerun(run_id, payload.get("from_step") or None)
    return json_response({"data": run_v1(rerun, request.app[SETTINGS_KEY].environment_id)}, status=201)


def _parse_list_query(request: web.Request) -> tuple[RunFilter, str | None, int]:
    """`GET /v1/runs` and `/v2/runs` query: every filter given must hold; newest first, `cursor` pages on."""
    q = request.query
    status = None
    if q.get("status"):
        try:
            status = RunStatus(q["status"].upper()) if q["status"].isascii() else None
        except ValueError:
            status = None
        if status is None:
            raise InvalidRequestError(f"unknown status {q['status']!r}; one of "
                                      + ", ".join(s.v1_name for s in RunStatus)) from None
    cursor = q.get("cursor") or None
    if cursor is not None and not is_ulid(cursor):
        raise InvalidRequestError("'cursor' must be a run id from a previous page")
    original = q.get("original_run_id") or None
    if original is not None and not is_ulid(original):
        raise InvalidRequestError(f"'original_run_id' must be a run id, not {original!r}")
    limit = _limit(q)
    created_from, created_until = parse_instant(q, "from"), parse_instant(q, "until")
    if created_from is not None and created_until is not None and created_from >= created_until:
        raise InvalidRequestError("'from' must be before 'until'")
    where = RunFilter(status, q.get("function_id") or None, q.get("event_name") or None,
                      original.upper() if original else None, created_from, created_until, q.get("query") or None)
    return where, cursor.upper() if cursor else None, limit


def _limit(query: Mapping[str, str]) -> int:
    try:
        limit = int(query.get("limit") or "50")  # `limit=` (empty) means the default, like the other parameters
    except ValueError:
        raise InvalidRequestError("'limit' must be a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"'limit' must be between 1 and {MAX_PAGE}")
    return limit


async def list_events(request: web.Request) -> web.Response:
    """`GET /v1/events?name=&received_after=&received_before=&cursor=&limit=` (Inngest's parameters), newest first."""
    q = request.query
    after, before = parse_instant(q, "received_after"), parse_instant(q, "received_before")
    if after is not None and before is not None and after >= before:
        raise InvalidRequestError("'received_after' must be before 'received_before'")
    cursor = q.get("cursor") or None
    if cursor is not None and not is_valid_event_id(cursor):
        raise InvalidRequestError("'cursor' must be an event id from a previous page")
    limit = _limit(q)
    events = await request.app[ENGINE_KEY].store.list_events(name=q.get("name") or None, received_after=after,
                                                             received_before=before, cursor=cursor, limit=limit + 1)
    if events is None:
        raise InvalidRequestError(f"'cursor' {cursor!r} is not an event of a previous page")
    next_cursor = events[limit - 1].id if len(events) > limit else None
    return json_response({"data": [event_v1(e) for e in events[:limit]], "cursor": next_cursor,
                          "has_more": next_cursor is not None})


def parse_instant(query: Mapping[str, str], name: str) -> int | None:
    """An RFC 3339 time (`2026-12-01T14:00:00Z`) or epoch milliseconds, as ms."""
    text = query.get(name) or None
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(f"{name!r} must be an RFC 3339 time (2026-12-01T14:00:00Z) or epoch "
                                  f"milliseconds, not {text!r}") from None
    if when.tzinfo is None:
        raise InvalidRequestError(f"{name!r} needs a time zone (e.g. a trailing Z): {text!r}")
    return int(when.timestamp() * 1000)


async def _list(request: web.Request, shape: Callable[[RunRecord], dict[str, Any]]) -> web.Response:
    where, cursor, limit = _parse_list_query(request)
    page = await list_runs(request.app[ENGINE_KEY].store, where, cursor=cursor, limit=limit)
    body: dict[str, Any] = {"data": [shape(r) for r in page.runs], "cursor": page.cursor,
                            "has_more": page.cursor is not None}
    if where.query is not None:
        # what the query read, so a page that stopped on the scan budget, or a query that fails on the runs'
        # data (a typo in a field name), is visible rather than an empty list that looks like "no such runs"
        body["search"] = {"scanned": page.scanned, "scan_budget": SCAN_BUDGET, "errors": page.query_errors,
                          "first_error": page.first_query_error}
    return json_response(body)


async def list_runs_v1(request: web.Request) -> web.Response:
    env = request.app[SETTINGS_KEY].environment_id
    return await _list(request, lambda r: run_v1(r, env))


def _extended(request: web.Request) -> bool:
    """`?extended=true`: v2 run objects with the fields the InngestRun schema has no room for."""
    value = request.query.get("extended", "").lower()
    if value not in ("", "true", "1", "false", "0"):
        raise InvalidRequestError(f"'extended' must be true or false, not {request.query['extended']!r}")
    return value in ("true", "1")


async def get_run_v2(request: web.Request) -> web.Response:
    extended = _extended(request)
    return json_response({"data": run_v2(await _load_run(request, _run_id(request)), extended)})


async def get_run_trace(request: web.Request) -> web.Response:
    """`GET /v2/runs/{run_id}/trace`: the run's trace as a span tree, from stepflow's own store."""
    run = await _load_run(request, _run_id(request))
    store = request.app[ENGINE_KEY].store
    tree = span_tree(run, await store.get_run_spans(run.id), [])
    _times(tree["root"])
    return json_response({"data": tree})


def _times(node: dict[str, Any]) -> None:
    node["start"], node["end"] = iso(node["start"]), iso(node["end"])
    for child in node["children"]:
        _times(child)


async def get_event_runs_v2(request: web.Request) -> web.Response:
    extended = _extended(request)
    return json_response({"data": [run_v2(r, extended) for r in await _event_runs(request)]})


async def list_runs_v2(request: web.Request) -> web.Response:
    extended = _extended(request)
    return await _list(request, lambda r: run_v2(r, extended))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/events", list_events)
    r.add_get("/v1/events/{event_id}", get_event)
    r.add_get("/v1/events/{event_id}/runs", get_event_runs_v1)
    r.add_get("/v1/runs", list_runs_v1)
    r.add_get("/v1/runs/{run_id}", get_run_v1)
    r.add_delete("/v1/runs/{run_id}", cancel_run)
    r.add_get("/v1/runs/{run_id}/steps", get_run_steps)
    r.add_get("/v2/events/{event_id}", get_event)
    r.add_get("/v2/events/{event_id}/runs", get_event_runs_v2)
    r.add_get("/v2/runs", list_runs_v2)
    r.add_get("/v2/runs/{run_id}", get_run_v2)
    r.add_get("/v2/runs/{run_id}/steps", get_run_steps)
    r.add_post("/v2/runs/{run_id}/rerun", rerun_run)
    r.add_get("/v2/runs/{run_id}/trace", get_run_trace)
