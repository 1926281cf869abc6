"""The aiohttp application: middlewares (errors, auth) and the routes of the event API and REST API."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from stepflow import codec
from stepflow.engine import EngineCore
from stepflow.errors import (
    InvalidArgumentError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    StepflowError,
    UnauthorizedError,
)
from stepflow.ids import control_character
from stepflow.protocol.signing import bearer_matches

if TYPE_CHECKING:
    from stepflow.embedded import Engine as EmbeddedEngine

log = logging.getLogger("stepflow.server")

ENGINE_KEY: web.AppKey[EngineCore] = web.AppKey("engine", EngineCore)


@dataclass(slots=True)
class ServerSettings:
    signing_keys: list[str] = field(default_factory=list)   # REST auth; the first also signs step requests
    event_keys: list[str] = field(default_factory=list)     # accepted in POST /e/{event_key}
    dev: bool = False                                       # keyless when no keys are configured
    max_request_bytes: int = 16 * 1024 * 1024
    environment_id: str = "local"
    # slow clients cannot hold connections: a request's headers must arrive within header_timeout seconds
    # of its first byte, and its body within body_timeout seconds (0 = no limit)
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    @property
    def rest_auth_required(self) -> bool:
        return bool(self.signing_keys) or not self.dev

    @property
    def event_auth_required(self) -> bool:
        return bool(self.event_keys) or not self.dev


SETTINGS_KEY: web.AppKey[ServerSettings] = web.AppKey("settings", ServerSettings)


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=codec.dumps(data), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, *, sdk_route: bool = False) -> web.Response:
    if sdk_route:
        # The routes the official Inngest SDKs call parse `error` as a string (their clients crash on an
        # object); `code` and `status` ride along for everyone else.
        return json_response({"error": message, "code": code, "status": status}, status=status)
    return json_response({"error": {"code": code, "message": message}}, status=status)


def is_sdk_route(path: str) -> bool:
    """Routes the official SDKs call: the event API and the sync."""
    return path.startswith("/e/") or path == "/fn/register"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as `{"error": {"code", "message"}}` with the right status — never a stack trace. The
    routes the SDKs call answer `{"error": message, "code", "status"}`, the shape their clients parse."""
    sdk_route = is_sdk_route(request.path)
    try:
        return await handler(request)
    except StepflowError as exc:
        return error_response(exc.status, exc.code, exc.message, sdk_route=sdk_route)
    except web.HTTPRequestEntityTooLarge:
        # aiohttp's exception does not keep the limit it enforced; it is the server's configured one
        limit = request.app[SETTINGS_KEY].max_request_bytes
        return error_response(413, "payload_too_large",
                              f"the request body is larger than the server's limit ({limit} bytes)",
                              sdk_route=sdk_route)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        message = exc.text or exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return error_response(exc.status, code, message, sdk_route=sdk_route)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the server failed to handle this request; see its log",
                              sdk_route=sdk_route)


def _key_matches(given: str, keys: list[str]) -> bool:
    # constant-time comparison against every key, so timing does not reveal which (or how much) matched
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


@web.middleware
async def printable_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Query parameters and path segments are printable text: a control character (U+0000 above all, which
    PostgreSQL cannot even compare) is a 400 naming the parameter, the same on every store."""
    if not request.query_string and not request.match_info:
        return await handler(request)
    for name, value in (*request.query.items(), *request.match_info.items()):
        control = control_character(value) or control_character(name)
        if control is not None:
            raise InvalidRequestError(f"the request's {name!r} contains the control character {control}")
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    path = request.path
    # the durable endpoints' output URL is for end users: its run-scoped token is its authentication
    token_route = path.startswith("/v1/runs/") and path.endswith("/output")
    if (path.startswith(("/v1/", "/v2/")) or path == "/metrics") and settings.rest_auth_required \
            and not token_route:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("missing 'Authorization: Bearer <signing key>' header")
        if not bearer_matches(token, settings.signing_keys):
            raise UnauthorizedError("the signing key is not valid for this server")
    return await handler(request)


def create_app(engine: EngineCore | EmbeddedEngine, settings: ServerSettings) -> web.Application:
    from stepflow.server import (
        openapi,
        routes_apps,
        routes_endpoints,
        routes_events,
        routes_metrics,
        routes_operations,
        routes_rest,
    )

    core = engine if isinstance(engine, EngineCore) else getattr(engine, "core", None)  # stepflow.Engine's core
    if not isinstance(core, EngineCore):
        raise InvalidArgumentError(f"create_app() takes a stepflow.Engine or a stepflow.engine.EngineCore, "
                        f"not {type(engine).__name__}")
    app = web.Application(middlewares=[error_middleware, printable_middleware, auth_middleware],
                          client_max_size=settings.max_request_bytes)
    app[ENGINE_KEY] = core
    app[SETTINGS_KEY] = settings
    routes_events.setup(app)
    routes_rest.setup(app)
    routes_operations.setup(app)
    routes_apps.setup(app)
    routes_endpoints.setup(app)
    routes_metrics.setup(app)
    openapi.setup(app)
    app.router.add_get("/health", health)
    return app


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def read_json_object(request: web.Request, allowed: set[str], shape: str, *,
                           required: bool = False) -> dict[str, Any]:
    """A small JSON-object body (the REST actions' `{...}`): 400 when it is not JSON, not an object, or has a
    field outside `allowed` — saying `expected <shape>`. An empty body is `{}`, unless `required`."""
    raw = await read_body(request)
    try:
        body = codec.loads(raw) if raw.strip() else ({} if not required else None)
    except codec.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or set(body) - allowed:
        raise InvalidRequestError(f"expected {shape}")
    return body


async def read_body(request: web.Request) -> bytes:
    settings = request.app[SETTINGS_KEY]
    if request.content_length is not None and request.content_length > settings.max_request_bytes:
        raise PayloadTooLargeError(f"the request body is {request.content_length} bytes; the server accepts at "
                                   f"most {settings.max_request_bytes} bytes per request")
    try:
        if settings.body_timeout > 0:
            async with asyncio.timeout(settings.body_timeout):  # no extra task per request, unlike wait_for
                return await request.read()
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLargeError(f"the request body is larger than the server's limit "
                                   f"({settings.max_request_bytes} bytes)") from exc
    except TimeoutError as exc:
        raise RequestTimeoutError(f"the request body did not arrive within {settings.body_timeout:g}s") from exc
    except RequestPayloadError as exc:
        # e.g. `Content-Encoding: gzip` on a body that is not gzip: the body cannot be read as sent
        cause = exc.__cause__ or exc.__context__
        detail = getattr(cause, "message", None) or str(cause or exc)
        raise InvalidRequestError(f"the request body cannot be read as sent "
                                  f"({request.headers.get('Content-Encoding') or 'no Content-Encoding'}): "
                                  f"{str(detail).strip()}") from exc


__all__ = [
    "ENGINE_KEY",
    "SETTINGS_KEY",
    "InvalidRequestError",
    "NotFoundError",
    "ServerSettings",
    "create_app",
    "error_response",
    "json_response",
    "read_body",
]
