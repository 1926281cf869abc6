"""Durable endpoints, server side: the checkpoint API the middleware talks to, and the output URL that the
async response redirects callers to."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from stepflow import codec
from stepflow.endpoints.aiohttp_middleware import to_aiohttp
from stepflow.endpoints.records import replayed_response
from stepflow.engine.endpoints import EndpointCheckpoints, _function_id
from stepflow.errors import InvalidRequestError, NotFoundError, UnauthorizedError
from stepflow.ids import is_ulid, now_ms
from stepflow.server.app import ENGINE_KEY, SETTINGS_KEY, json_response, read_body
from stepflow.tokens import check_token

OUTPUT_WAIT_LIMIT = 30.0   # seconds GET /v1/runs/{id}/output blocks before answering "still running"
OUTPUT_PATH_SUFFIX = "/output"


async def checkpoints(request: web.Request) -> web.Response:
    try:
        payload = codec.loads(await read_body(request))
    except codec.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from exc
    items = payload.get("checkpoints") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise InvalidRequestError('expected {"checkpoints": [...]}')
    results = await EndpointCheckpoints(request.app[ENGINE_KEY]).apply(items)
    return json_response({"data": results})


async def idempotent_run(request: web.Request) -> web.Response:
    fn_id, key = request.query.get("fn_id"), request.query.get("key")
    if not fn_id or not key:
        raise InvalidRequestError("'fn_id' and 'key' are required")
    run = await request.app[ENGINE_KEY].store.find_idempotent_run(_function_id(fn_id), key, now_ms())
    if run is None:
        raise NotFoundError("no run for this idempotency key")
    return json_response({"data": {"run_id": run.id, "status": run.status.v1_name, "output": run.output}})


async def run_output(request: web.Request) -> web.StreamResponse:
    """Block until the run ends (up to the wait limit), then replay the endpoint's final response."""
    run_id = request.match_info["run_id"].upper()
    if not is_ulid(run_id):
        raise InvalidRequestError("not a run id")
    settings = request.app[SETTINGS_KEY]
    reason = check_token(request.query.get("token", ""), run_id, settings.signing_keys)
    if reason is not None:
        raise UnauthorizedError(f"{reason}; use the URL the endpoint redirected you to")
    engine = request.app[ENGINE_KEY]
    deadline = time.monotonic() + OUTPUT_WAIT_LIMIT
    run = None
    while time.monotonic() < deadline:  # the run's first checkpoint may still be on its way
        run = await engine.wait_for_run(run_id, max(0.0, deadline - time.monotonic()))
        if run is not None and run.status.is_terminal:
            break
        if run is None:
            await asyncio.sleep(0.1)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist (its endpoint never recorded it)")
    if not run.status.is_terminal:
        response = json_response({"status": run.status.v1_name if run else "Queued", "run_id": run_id,
                                  "message": f"still running after {OUTPUT_WAIT_LIMIT:g}s; request this URL again"},
                                 status=202)
        response.headers["Retry-After"] = "1"
        response.headers["X-Run-ID"] = run_id
        return response
    if run.status.value != "COMPLETED" or not isinstance(run.output, dict):
        # end users get no stack or internal message (the sync path hides them too); the run keeps them
        failed = json_response({"error": {"code": "run_failed", "message": f"the request's run ended "
                                          f"{run.status.v1_name}"}, "run_id": run_id}, status=500)
        failed.headers["X-Run-ID"] = run_id
        return failed
    return replay(run.output, run_id)


def replay(result: dict[str, object], run_id: str) -> web.Response:
    """A stored API result back into an HTTP response (the durable endpoints' core does it for both sides)."""
    return to_aiohttp(replayed_response(result, run_id))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/checkpoints", checkpoints)
    app.router.add_get("/v1/checkpoints/idempotency", idempotent_run)
    app.router.add_get("/v1/runs/{run_id}/output", run_output)
