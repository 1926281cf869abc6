"""`POST /fn/register`: SDK apps register (sync) their functions; `stepflow dev -u URL` asks them to."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from stepflow import codec
from stepflow.engine.activity import log as activity_log
from stepflow.engine.endpoints import is_endpoint_function
from stepflow.engine.ops import INVOKED_EVENT
from stepflow.errors import InvalidRequestError, UnauthorizedError
from stepflow.protocol.signing import bearer_matches
from stepflow.protocol.wire import STEPFLOW_SERVER_HEADER as SERVER_HEADER
from stepflow.server.app import ENGINE_KEY, SETTINGS_KEY, json_response, read_body, read_json_object
from stepflow.server.serialize import iso
from stepflow.server.sync import SyncLog, parse_sync

log = logging.getLogger("stepflow.server")

SYNC_LOG_KEY: web.AppKey[SyncLog] = web.AppKey("sync_log", SyncLog)


async def register_app(request: web.Request) -> web.Response:
    """A sync: stepflow's own format or the official SDKs' SynchronizeRequest (see `stepflow.server.sync`)."""
    settings = request.app[SETTINGS_KEY]
    if settings.rest_auth_required:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("registering functions needs 'Authorization: Bearer <signing key>'")
        if not bearer_matches(token, settings.signing_keys):
            raise UnauthorizedError("the signing key is not valid for this server: sync with the key the server "
                                    "was started with (INNGEST_SIGNING_KEY / STEPFLOW_SIGNING_KEY)")
    try:
        payload = codec.loads(await read_body(request))
    except codec.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from exc
    sync = parse_sync(payload)
    request.app[SYNC_LOG_KEY].add(sync)
    engine = request.app[ENGINE_KEY]
    registered: list[dict[str, Any]] = []
    for fn in sync.functions:
        version = await engine.register(fn)
        registered.append({"id": fn.id, "version": version})
    kept = {fn.id for fn in sync.functions}
    removed = [fid for fid in await engine.functions.deactivate_app(sync.app_id, keep=kept)]
    log.info("registered app %s%s: %s", sync.app_id, f" ({sync.sdk})" if sync.sdk else "",
             ", ".join(f"{r['id']} v{r['version']}" for r in registered) or "no functions")
    # `ok`, `functions` and `removed` for stepflow's SDK and CLI; `status` and `modified` as the official SDKs'
    # register response schema reads them.
    return json_response({"ok": True, "status": 200, "modified": True, "app_id": sync.app_id,
                          "functions": registered, "removed": removed})


async def sync_app(url: str, server_url: str, sync_log: SyncLog, announce: Callable[[str], None] | None = None,
                   *, attempts: int = 0, first_delay: float = 1.0, max_delay: float = 30.0) -> bool:
    """Ask the SDK endpoint at `url` to register with us (PUT), and report what really happened: the functions
    it registered, or the error it answered. Retries with a doubling delay (up to `max_delay`) while the app
    is unreachable or failing (attempts=0: until it works). Used by `stepflow dev -u URL`."""
    tried = 0
    delay = first_delay
    last_report = ""
    async with aiohttp.ClientSession() as session:
        while True:
            tried += 1
            started = time.time()
            report = ""
            try:
                async with session.put(url, headers={SERVER_HEADER: server_url},
                                       timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                report = f"app at {url} is not reachable ({exc or type(exc).__name__})"
            else:
                received = sync_log.since(started)
                if status < 300 and received:
                    for record in received:
                        ids = ", ".join(record.function_ids) or "none"
                        line = (f"synced app {record.app_id!r} at {url}: registered "
                                f"{len(record.function_ids)} function(s): {ids}")
                        (announce or activity_log.info)(line)  # routine: INFO, shown by `stepflow dev`
                    return True
                if status < 300 and _app_error(text):
                    # the official Python SDK answers 200 with the server's refusal in the body
                    report = f"sync of the app at {url} failed: {_app_error(text)}"
                elif status < 300:
                    report = (f"app at {url} answered the sync ({status}) but registered nothing with this server; "
                              f"is it pointed at {server_url} (INNGEST_BASE_URL / STEPFLOW_BASE_URL)? "
                              f"It said: {_app_message(text)}")
                else:
                    report = f"sync of the app at {url} failed ({status}): {_app_message(text)}"
            if report != last_report:
                (announce or log.warning)(f"{report}; retrying in {delay:g}s, then less often")
                last_report = report
            if attempts and tried >= attempts:
                return False
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)


def _app_error(text: str) -> str | None:
    """The error in a sync answer's body, if it carries one."""
    try:
        document = codec.loads(text)
    except codec.JSONDecodeError:
        return None
    if isinstance(document, dict) and document.get("error"):
        return _app_message(text)
    return None


def _app_message(text: str) -> str:
    """The error an SDK endpoint answered, as the person should read it."""
    try:
        document = codec.loads(text)
    except codec.JSONDecodeError:
        return text.strip()[:300] or "(empty answer)"
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        message = error or document.get("message")
        if isinstance(message, str):
            return message[:500]
    return text.strip()[:300]


async def list_functions(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    paused = await engine.store.paused_functions()  # read each time: another process may have paused one
    data = [{"id": fn.id, "name": fn.name, "app_id": fn.app_id, "version": version, "kind": fn.kind,
             "triggers": [t.to_config() for t in fn.triggers], "source": fn.source,
             "durable_endpoint": is_endpoint_function(fn), "flow_control": fn.flow.to_config(),
             "paused": fn.id in paused,
             "paused_at": iso(paused[fn.id]) if fn.id in paused else None}
            for version, fn in sorted(engine.functions.active(), key=lambda item: item[1].id)]
    return json_response({"data": data})


async def invoke_function(request: web.Request) -> web.Response:
    """`POST /v2/functions/{function_id}/invoke {"data": {...}, "user"?: {...}}`: start one run of the function,
    whatever its triggers, with the `inngest/function.invoked` event `step.invoke` uses."""
    function_id = request.match_info["function_id"]
    payload = await read_json_object(request, {"data", "user"}, '{"data": {...}, "user"?: {...}}')
    event = {"name": INVOKED_EVENT, "data": payload.get("data") or {}}
    if payload.get("user") is not None:
        event["user"] = payload["user"]
    event_id, run_id = await request.app[ENGINE_KEY].invoke(function_id, event)
    return json_response({"data": {"run_id": run_id, "event_id": event_id}}, status=201)


def setup(app: web.Application) -> None:
    app[SYNC_LOG_KEY] = SyncLog()
    app.router.add_post("/fn/register", register_app)
    app.router.add_get("/v1/functions", list_functions)
    app.router.add_post("/v2/functions/{function_id}/invoke", invoke_function)
