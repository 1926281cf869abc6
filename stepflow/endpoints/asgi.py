"""Durable endpoints in ASGI frameworks (Starlette, FastAPI): `app.add_middleware(provider.asgi)`.

The middleware buffers the request body (so a resumed call can hand the handler the original one), marks the
request as durable-capable, turns an asynchronous handler into the configured async response, answers the
engine's resume calls with the SDK protocol, and adds `X-Run-ID` to every response of a tracked request.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from stepflow.endpoints.core import (
    EndpointAsyncInterrupt,
    EndpointCall,
    EndpointOptions,
    EndpointResumeInterrupt,
    Failed,
    Final,
    Provider,
    RequestInfo,
    claim_idempotent,
    current_call,
    idempotent_response,
    identifiers_error,
    release_idempotent,
    render_async_response,
)
from stepflow.endpoints.records import HttpResponse, recorded_result
from stepflow.endpoints.resume import is_resume, open_resume, sdk_answer
from stepflow.errors import ConfigError, InvalidArgumentError
from stepflow.ids import new_ulid

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
    """A Starlette response as the API result stored with the run (and replayed by the output URL)."""
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray)):
        raise InvalidArgumentError("a durable handler must return a response with a body (not a streaming "
                                   "response)")
    return recorded_result(response.status_code, response.headers.items(), body)


def to_starlette(response: HttpResponse) -> Any:
    """A core response as Starlette's (returned from the endpoint, through the app's middlewares)."""
    from starlette.responses import Response

    return Response(content=response.body, status_code=response.status, headers=response.headers)


async def run_durable_asgi(handler: Callable[..., Awaitable[Any]], options: EndpointOptions, request: Any) -> Any:
    """What a durable handler does under the ASGI middleware (called by the `durable` wrapper)."""
    context = asgi_context.get()
    if context is None:
        raise ConfigError("durable endpoint needs the stepflow middleware: app.add_middleware(provider.asgi)")
    fn_id = options.id or f"{context.info.method} {context.info.path}"
    if not options.id and getattr(request, "path_params", None):
        raise identifiers_error(fn_id)
    call = EndpointCall(context.provider, options, fn_id, context.info, resume=context.resume,
                        idempotency=context.idempotency)
    key = context.idempotency if context.resume is None else None
    if key:
        # as under aiohttp: a repeated request with the same key gets the recorded result (or waits for it)
        found = await claim_idempotent(context.provider, fn_id, key, call.run_id)
        if found is not None:
            return to_starlette(idempotent_response(context.provider, found))
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
        return to_starlette(outcome.response(call.run_id))
    raise EndpointAsyncInterrupt(outcome)


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
                call = open_resume(provider, headers, body, scope["path"])
                if isinstance(call, HttpResponse):
                    await send_response(send, call)
                    return
                resume, body = call.document, call.body
                scope = dict(scope, method=call.method, path=call.path, raw_path=call.path.encode(),
                             query_string=call.query.encode())
            info = RequestInfo(method=scope["method"], path=scope["path"], domain=provider.app_id,
                               ip=(scope.get("client") or ("", 0))[0], content_type=headers.get("content-type", ""),
                               query=scope.get("query_string", b"").decode("latin-1"), body=body,
                               traceparent=headers.get("traceparent"))
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
            except EndpointResumeInterrupt as answer:
                run_id = context.call.run_id if context.call else None
                await send_response(send, sdk_answer(answer.reply, run_id))
            except EndpointAsyncInterrupt as gone:
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
    result = recorded_result(captured["status"], _decode_headers(captured["headers"]).items(),
                             captured["body"])

    async def answered(step: Any) -> dict[str, Any]:
        return result

    call = EndpointCall(provider, EndpointOptions(), f"{context.info.method} {path}", context.info, run_id=run_id)
    await call.execute(answered, lambda recorded: recorded)


def _discard(send: Send) -> Send:
    """In a resume call the handler's response is not for the engine: the SDK answer is sent instead."""
    async def drop(message: Message) -> None:
        return None

    return drop


async def send_response(send: Send, response: HttpResponse) -> None:
    """Send a core response as ASGI messages."""
    headers = [(k.lower().encode(), str(v).encode()) for k, v in response.headers.items()
               if k.lower() != "content-length"]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _send_async(send: Send, provider: Provider, context: AsgiRequestContext,
                      gone: EndpointAsyncInterrupt) -> None:
    options = context.call.options if context.call else EndpointOptions()
    rendered = render_async_response(provider, options, gone.outcome, context.request)
    if isinstance(rendered, HttpResponse):
        await send_response(send, rendered)
    else:
        # an ASGI response object (e.g. Starlette's), made from the handler's request as under aiohttp
        await rendered({"type": "http"}, _never_receive, send)


async def _never_receive() -> Message:
    return {"type": "http.disconnect"}


__all__ = ["asgi_context", "make_asgi_middleware", "run_durable_asgi", "starlette_result", "urlencode"]
