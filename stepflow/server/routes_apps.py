"""`POST /fn/register`: SDK apps register (sync) their functions; `stepflow dev -u URL` asks them to."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from stepflow import codec
from stepflow.definitions import parse_function
from stepflow.errors import DefinitionError, InvalidRequestError, UnauthorizedError
from stepflow.server.app import ENGINE_KEY, SETTINGS_KEY, _key_matches, json_response, read_body

log = logging.getLogger("stepflow.server")
SERVER_HEADER = "X-Stepflow-Server"


async def register_app(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    if settings.rest_auth_required:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _key_matches(token.strip(), settings.signing_keys):
            raise UnauthorizedError("registering functions needs 'Authorization: Bearer <signing key>'")
    try:
        payload = codec.loads(await read_body(request))
    except codec.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("functions"), list):
        raise InvalidRequestError("expected {\"app_id\", \"url\", \"functions\": [...]}")
    app_id = payload.get("app_id")
    source = f"app {app_id} at {payload.get('url')}"
    functions = []
    for config in payload["functions"]:
        fn = parse_function(config, source=source)  # DefinitionError → 400 naming the function and problem
        if fn.app_id != app_id:
            raise DefinitionError(f"belongs to app {fn.app_id!r}, not {app_id!r}", source=source, function=fn.id)
        functions.append(fn)
    engine = request.app[ENGINE_KEY]
    registered: list[dict[str, Any]] = []
    for fn in functions:
        version = await engine.register(fn)
        registered.append({"id": fn.id, "version": version})
    kept = {fn.id for fn in functions}
    removed = [fid for fid in await engine.functions.deactivate_app(str(app_id), keep=kept)]
    log.info("registered app %s: %s", app_id, ", ".join(f"{r['id']} v{r['version']}" for r in registered))
    return json_response({"ok": True, "app_id": app_id, "functions": registered, "removed": removed})


async def sync_app(url: str, server_url: str, *, attempts: int = 0, interval: float = 1.0) -> bool:
    """Ask the SDK endpoint at `url` to register with us (PUT), retrying until it answers (attempts=0:
    forever). Used by `stepflow dev -u URL`."""
    tried = 0
    async with aiohttp.ClientSession() as session:
        while True:
            tried += 1
            try:
                async with session.put(url, headers={SERVER_HEADER: server_url},
                                       timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    text = await resp.text()
                    if resp.status < 300:
                        log.warning("synced app at %s", url)
                        return True
                    log.warning("sync with %s answered %s: %s", url, resp.status, text[:300])
            except aiohttp.ClientError as exc:
                if tried == 1:
                    log.warning("app at %s not reachable yet (%s); retrying every %gs", url, exc, interval)
            if attempts and tried >= attempts:
                return False
            await asyncio.sleep(interval)


async def list_functions(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    data = [{"id": fn.id, "name": fn.name, "app_id": fn.app_id, "version": version, "kind": fn.kind,
             "triggers": [t.to_config() for t in fn.triggers], "source": fn.source}
            for version, fn in sorted(engine.functions.active(), key=lambda item: item[1].id)]
    return json_response({"data": data})


def setup(app: web.Application) -> None:
    app.router.add_post("/fn/register", register_app)
    app.router.add_get("/v1/functions", list_functions)
