"""Durable endpoints in aiohttp: `web_app.middlewares.append(provider.aiohttp_middleware)`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from stepflow.endpoints.core import (
    OPTIONS_ATTR,
    USER_ATTR,
    EndpointCall,
    EndpointOptions,
    Failed,
    Final,
    GoneAsync,
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
from stepflow.protocol.wire import NO_RETRY_HEADER, RUN_ID_HEADER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def response_result(response: Any) -> dict[str, Any]:
    """An aiohttp response as the API result stored with the run (and replayed by the output URL)."""
    if not isinstance(response, web.StreamResponse):
        raise InvalidArgumentError("a durable handler must return an aiohttp web.Response, not "
                                   f"{type(response).__name__}")
    if not isinstance(response, web.Response):
        # streamed (web.FileResponse, server-sent events): the body is not in hand before it is sent. The
        # response goes out as it is and is recorded without its body — refusing it would turn every file or
        # stream route into a 500 under track_all_endpoints
        return recorded_result(response.status, response.headers.items(), None)
    raw = response.body if isinstance(response.body, (bytes, bytearray)) else (response.text or "").encode()
    return recorded_result(response.status, response.headers.items(), raw)


def to_aiohttp(response: HttpResponse) -> web.Response:
    """A core response as aiohttp's."""
    return web.Response(status=response.status, body=response.body, headers=response.headers)


def _function_id(request: web.Request, options: EndpointOptions, durable: bool = True) -> str:
    if options.id:
        return options.id
    resource = request.match_info.route.resource
    formatter = resource.get_info().get("formatter") if resource is not None else None
    if formatter and not durable:
        # a plain handler tracked by track_all_endpoints cannot be given an id: refusing it would break every
        # route with identifiers, so it is tracked under its route pattern ("GET /users/{id}"), one function
        return f"{request.method} {formatter}"
    if formatter:
        raise identifiers_error(f"{request.method} {formatter}")
    return f"{request.method} {request.path}"


def make_middleware(provider: Provider) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_resume(request.headers):
            return await _resume(provider, request)
        options: EndpointOptions | None = getattr(handler, OPTIONS_ATTR, None)
        # with track_all_endpoints, a request no route matched (404, 405) is not an endpoint: it stays the
        # framework's error and does not become a run (every scanner's probe would be a new function)
        if options is None and (not provider.track_all_endpoints or request.match_info.http_exception is not None):
            return await handler(request)
        durable = options is not None
        options = options or EndpointOptions()
        user = getattr(handler, USER_ATTR, None)
        body = await request.read()
        info = RequestInfo(method=request.method, path=request.path, domain=provider.app_id,
                           ip=request.remote or "", content_type=request.content_type, query=request.query_string,
                           body=body, traceparent=request.headers.get("traceparent"))
        fn_id = _function_id(request, options, durable)
        idempotency = request.headers.get(provider.idempotency_header)
        call = EndpointCall(provider, options, fn_id, info, idempotency=idempotency)
        if idempotency:
            # a repeated request with the same key gets the recorded result (or waits for it)
            found = await claim_idempotent(provider, fn_id, idempotency, call.run_id)
            if found is not None:
                return to_aiohttp(idempotent_response(provider, found))
        for hook in provider.before:
            hook(request)
        token = current_call.set(call)
        try:
            if user is not None:
                outcome = await call.execute(lambda step: _answer(user(request, step)), response_result)
            else:  # tracked without steps
                outcome = await call.execute(lambda step: _answer(handler(request)), response_result)
        finally:
            current_call.reset(token)
            if idempotency:
                release_idempotent(provider, fn_id, idempotency, call.run_id)
        response = _render(provider, request, call, options, outcome)
        response.headers[RUN_ID_HEADER] = call.run_id
        for after in provider.after:
            after(request, response)
        return response

    return middleware


async def _answer(handler_call: Awaitable[Any]) -> Any:
    """The handler's response. aiohttp handlers idiomatically `raise web.HTTPNotFound()` (or a redirect): that
    is their answer, not a failure — left raised, the SDK execution would take it for a crash and retry the
    run (or answer 500)."""
    try:
        return await handler_call
    except web.HTTPException as exc:
        return web.Response(status=exc.status, reason=exc.reason, body=exc.body, headers=exc.headers)


def _render(provider: Provider, request: web.Request, call: EndpointCall, options: EndpointOptions,
            outcome: Final | GoneAsync | Failed) -> web.StreamResponse:
    if isinstance(outcome, Final):
        response: web.StreamResponse = outcome.response
        return response
    if isinstance(outcome, Failed):
        return to_aiohttp(outcome.response(call.run_id))
    rendered = render_async_response(provider, options, outcome, request)
    if isinstance(rendered, HttpResponse):
        return to_aiohttp(rendered)
    if not isinstance(rendered, web.StreamResponse):
        raise ConfigError("a custom async_response must return an aiohttp response, not "
                          f"{type(rendered).__name__}")
    return rendered


async def _resume(provider: Provider, request: web.Request) -> web.StreamResponse:
    """The engine calls the endpoint again, signed, with the memoized steps: re-run the handler on them."""
    blank = request.clone()  # cloned before the body is read (aiohttp refuses afterwards); re-aimed below
    resume = open_resume(provider, request.headers, await request.read(), request.path)
    if isinstance(resume, HttpResponse):
        return to_aiohttp(resume)
    method, path, query = resume.method, resume.path, resume.query
    original = blank.clone(method=method, rel_url=f"{path}?{query}" if query else path)
    # the handler reads the original request's body (when it was recorded), not the engine's Input
    original._read_bytes = resume.body
    match = await request.app.router.resolve(original)
    handler = match.handler
    options: EndpointOptions | None = getattr(handler, OPTIONS_ATTR, None)
    user = getattr(handler, USER_ATTR, None)
    if options is None or user is None:
        return to_aiohttp(HttpResponse.json({"name": "EndpointNotFound",
                                             "message": f"no durable handler for {method} {path}"},
                                            404, {NO_RETRY_HEADER: "true"}))
    original._match_info = match
    info = RequestInfo(method=method, path=path, domain=provider.app_id, ip="", content_type="", query=query,
                       body=b"")
    call = EndpointCall(provider, options, resume.fn or f"{method} {path}", info, resume=resume.document)
    token = current_call.set(call)
    try:
        reply = await call.resume_reply(lambda step: _answer(user(original, step)), response_result)
    finally:
        current_call.reset(token)
    return to_aiohttp(sdk_answer(reply, call.run_id))
