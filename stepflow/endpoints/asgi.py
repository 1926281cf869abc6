"""Durable endpoints in ASGI frameworks (Starlette, FastAPI): `app.add_middleware(provider.asgi)`.

The middleware buffers the request body (so a resumed call can hand the handler the original one), marks the
request as durable-capable, turns an asynchronous handler into the configured async response, answers the
engine's resume calls with the SDK protocol, and adds `X-Run-ID` to every response of a tracked request.
"""

from __future__ import annotations

import base64
import contextvars
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from stepflow import codec
from stepflow.endpoints.core import (
    REDIRECT,
    TOKEN,
    EndpointAsync,
    EndpointCall,
    EndpointOptions,
    EndpointResume,
    Failed,
    Final,
    Provider,
    RequestInfo,
    claim_idempotent,
    current_call,
    is_resume,
    read_resume,
    release_idempotent,
)
from stepflow.errors import UnauthorizedError
from stepflow.ids import new_ulid
from stepflow.protocol import signing
from stepflow.protocol.wire import NO_RETRY_HEADER
from stepflow.tokens import make_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(slots=True)
class AsgiRequestContext:
    provider: Provider
    info: RequestInfo
    resume: dict[str, Any] | None = None
    idempotency: str | None = None
    call: EndpointCall | None = None
    request: Any = None  # the framework's request, for a custom async response


asgi_context: contextvars.ContextVar[AsgiRequestContext | None] = contextvars.ContextVar("stepflow_asgi",
                                                                                          default=None)


def starlette_result(response: Any) -> dict[str, Any]:
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError("a durable handler must return a response with a body (not a streaming response)")
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "date", "server")}
    result: dict[str, Any] = {"status_code": response.status_code, "headers": headers}
    try:
        result["body"] = bytes(body).decode()
    except UnicodeDecodeError:
        result["body"], result["body_encoding"] = base64.b64encode(bytes(body)).decode(), "base64"
    return result


async def run_durable_asgi(handler: Callable[..., Awaitable[Any]], options: EndpointOptions, request: Any) -> Any:
    """What a durable handler does under the ASGI middleware (called by the `durable` wrapper)."""
    context = asgi_context.get()
    if context is None:
        raise RuntimeError("durable endpoint needs the stepflow middleware: app.add_middleware(provider.asgi)")
    fn_id = options.id or f"{context.info.method} {context.info.path}"
    if not options.id and getattr(request, "path_params", None):
        raise ValueError(f"the durable endpoint {fn_id} has identifiers in its path: give it an id "
                         "(@endpoints.durable(id=...))")
    call = EndpointCall(context.provider, options, fn_id, context.info, resume=context.resume,
                        idempotency=context.idempotency)
    key = context.idempotency if context.resume is None else None
    if key:
        # as under aiohttp: a repeated request with the same key gets the recorded result (or waits for it)
        found = await claim_idempotent(context.provider, fn_id, key, call.run_id)
        if found is not None:
            return _replayed(context.provider, found)
    context.call = call
    context.request = request
    token = current_call.set(call)

    async def answer(step: Any) -> Any:
        try:
            return await handler(request, step)
        except Exception as exc:
            # `raise HTTPException(404)` is the handler's answer in Starlette/FastAPI, rendered by the app's
            # exception handler; left raised, the SDK execution would take it for a crash (500, or a retried run)
            rendered = await _render_http_exception(request, exc)
            if rendered is None:
                raise
            return rendered

    try:
        outcome = await call.execute(answer, starlette_result)
    finally:
        current_call.reset(token)
        if key:
            release_idempotent(context.provider, fn_id, key, call.run_id)
    if isinstance(outcome, Final):
        return outcome.response
    if isinstance(outcome, Failed):
        from starlette.responses import JSONResponse

        return JSONResponse(outcome.public_body(call.run_id), status_code=500)
    raise EndpointAsync(outcome)


async def _render_http_exception(request: Any, exc: Exception) -> Any:
    """The response the app's exception handler makes of an HTTPException, or None for other exceptions."""
    try:
        from starlette.exceptions import HTTPException
    except ImportError:  # pragma: no cover - another ASGI framework
        return None
    if not isinstance(exc, HTTPException):
        return None
    handlers = getattr(getattr(request, "app", None), "exception_handlers", None) or {}
    for cls in type(exc).__mro__:  # the most specific handler, as Starlette looks it up
        if cls in handlers:
            rendered = handlers[cls](request, exc)
            return await rendered if inspect.isawaitable(rendered) else rendered
    from starlette.responses import PlainTextResponse, Response

    if exc.status_code in (204, 304):  # Starlette's default handler
        return Response(status_code=exc.status_code, headers=exc.headers)
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


def _replayed(provider: Provider, found: dict[str, Any]) -> Any:
    """The response for a request whose idempotency key already has a run."""
    from starlette.responses import RedirectResponse, Response

    run_id = str(found["run_id"])
    result = found.get("output")
    if found.get("status") == "Completed" and isinstance(result, dict):
        body = result.get("body")
        raw = base64.b64decode(str(body)) if result.get("body_encoding") == "base64" else \
            (str(body).encode() if body is not None else b"")
        headers = {str(k): str(v) for k, v in dict(result.get("headers") or {}).items()
                   if str(k).lower() not in ("content-length", "transfer-encoding", "date", "server")}
        headers["X-Run-ID"] = run_id
        return Response(content=raw, status_code=int(result.get("status_code", 200)), headers=headers)
    url = provider.output_url(run_id, make_token(run_id, provider.signing_key))
    return RedirectResponse(url, status_code=303, headers={"X-Run-ID": run_id})


def make_asgi_middleware(provider: Provider) -> type:
    class StepflowEndpoints:
        def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], **_: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            resume: dict[str, Any] | None = None
            if is_resume(headers):
                if not provider.dev:
                    try:
                        signing.verify(body, headers.get(signing.SIGNATURE_HEADER.lower()), provider.keys or ["-"])
                    except UnauthorizedError as exc:
                        await _send_json(send, 401, {"error": {"code": "unauthorized", "message": exc.message}})
                        return
                call = read_resume(body, scope["path"])
                if isinstance(call, str):
                    await _send_json(send, 400, {"name": "InvalidResume", "message": call},
                                     {NO_RETRY_HEADER: "true"})
                    return
                resume, body = call.document, call.body
                scope = dict(scope, method=call.method, path=call.path, raw_path=call.path.encode(),
                             query_string=call.query.encode())
            info = RequestInfo(method=scope["method"], path=scope["path"], domain=provider.app_id,
                               ip=(scope.get("client") or ("", 0))[0], content_type=headers.get("content-type", ""),
                               query=scope.get("query_string", b"").decode("latin-1"), body=body)
            context = AsgiRequestContext(provider=provider, info=info, resume=resume,
                                         idempotency=headers.get(provider.idempotency_header.lower()))
            delivered = False

            async def replay_receive() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            # track_all_endpoints: a plain (non-durable) request becomes a run too, recorded once it answered
            tracked_run_id = new_ulid() if provider.track_all_endpoints and resume is None else None
            captured: dict[str, Any] = {"status": None, "headers": [], "body": b""}
            hook_request = _hook_request(scope, replay_receive) if (provider.before or provider.after) \
                and resume is None else None
            for hook in provider.before if resume is None else []:
                hook(hook_request)

            async def send_with_run_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    captured["status"], captured["headers"] = message["status"], list(message.get("headers", []))
                    run_id = context.call.run_id if context.call is not None else (
                        tracked_run_id if message["status"] not in UNTRACKED_STATUSES else None)
                    if run_id:
                        message = dict(message, headers=[*message.get("headers", []), (b"x-run-id", run_id.encode())])
                elif message["type"] == "http.response.body" and len(captured["body"]) <= MAX_TRACKED_BODY:
                    captured["body"] += message.get("body", b"")
                await send(message)

            token = asgi_context.set(context)
            try:
                await self.app(scope, replay_receive, send_with_run_id if resume is None else _discard(send))
                if tracked_run_id and context.call is None and captured["status"] not in (None, *UNTRACKED_STATUSES):
                    await _record_plain(provider, context, tracked_run_id, scope, captured)
                for after in provider.after if resume is None else []:
                    after(hook_request, SimpleNamespace(status_code=captured["status"],
                                                        headers=_decode_headers(captured["headers"])))
            except EndpointResume as answer:
                await _send_json(send, answer.reply.status, answer.reply.body, answer.reply.headers,
                                 run_id=context.call.run_id if context.call else None)
            except EndpointAsync as gone:
                await _send_async(send, provider, context, gone)
            finally:
                asgi_context.reset(token)

    return StepflowEndpoints


UNTRACKED_STATUSES = (404, 405)   # unmatched paths are not endpoints: no run for every probe
MAX_TRACKED_BODY = 1024 * 1024


def _hook_request(scope: Scope, receive: Receive) -> Any:
    """What before/after hooks receive under ASGI: a Starlette Request (the scope itself if Starlette is absent)."""
    try:
        from starlette.requests import Request
    except ImportError:  # pragma: no cover - a bare ASGI app
        return scope
    return Request(scope, receive)


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}


async def _record_plain(provider: Provider, context: AsgiRequestContext, run_id: str, scope: Scope,
                        captured: dict[str, Any]) -> None:
    """A tracked non-durable request: a run with no steps, its request and its response."""
    path = context.info.path
    for name, value in (scope.get("path_params") or {}).items():  # /items/7 is recorded as /items/{item_id}
        path = path.replace(str(value), "{" + name + "}")
    headers = {k: v for k, v in _decode_headers(captured["headers"]).items()
               if k.lower() not in ("content-length", "date", "server")}
    result: dict[str, Any] = {"status_code": captured["status"], "headers": headers}
    try:
        result["body"] = bytes(captured["body"]).decode()
    except UnicodeDecodeError:
        result["body"], result["body_encoding"] = base64.b64encode(bytes(captured["body"])).decode(), "base64"

    async def answered(step: Any) -> dict[str, Any]:
        return result

    call = EndpointCall(provider, EndpointOptions(), f"{context.info.method} {path}", context.info, run_id=run_id)
    await call.execute(answered, lambda recorded: recorded)


def _discard(send: Send) -> Send:
    """In a resume call the handler's response is not for the engine: the SDK answer is sent instead."""
    async def drop(message: Message) -> None:
        return None

    return drop


async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None,
                     run_id: str | None = None) -> None:
    payload = codec.dumps(body)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    if run_id:
        raw_headers.append((b"x-run-id", run_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def _send_async(send: Send, provider: Provider, context: AsgiRequestContext, gone: EndpointAsync) -> None:
    outcome = gone.outcome
    options = context.call.options if context.call else EndpointOptions()
    mode = options.async_response or provider.async_response
    url = provider.output_url(outcome.run_id, outcome.token)
    if mode == REDIRECT:
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", url.encode()), (b"x-run-id", outcome.run_id.encode()),
                                (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
    elif mode == TOKEN:
        await _send_json(send, 202, {"run_id": outcome.run_id, "token": outcome.token, "url": url},
                         run_id=outcome.run_id)
    else:
        assert callable(mode)
        # an ASGI response object (e.g. Starlette's), made from the handler's request as under aiohttp
        custom = mode(context.request, outcome.run_id, outcome.token)
        await custom({"type": "http"}, _never_receive, send)


async def _never_receive() -> Message:
    return {"type": "http.disconnect"}


__all__ = ["asgi_context", "make_asgi_middleware", "run_durable_asgi", "starlette_result", "urlencode"]
