"""Durable endpoints in aiohttp: `web_app.middlewares.append(provider.aiohttp_middleware)`."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from stepflow import codec
from stepflow.endpoints.core import (
    REDIRECT,
    TOKEN,
    EndpointCall,
    EndpointOptions,
    Failed,
    Final,
    GoneAsync,
    Provider,
    RequestInfo,
    claim_idempotent,
    current_call,
    is_resume,
    read_resume,
    release_idempotent,
)
from stepflow.errors import DefinitionError, UnauthorizedError
from stepflow.protocol import signing
from stepflow.protocol.wire import NO_RETRY_HEADER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPTIONS_ATTR = "__stepflow_endpoint__"
USER_ATTR = "__stepflow_user_handler__"


def response_result(response: Any) -> dict[str, Any]:
    """An aiohttp response as the API result stored with the run (and replayed by the output URL)."""
    if not isinstance(response, web.StreamResponse):
        raise TypeError(f"a durable handler must return an aiohttp web.Response, not {type(response).__name__}")
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "date", "server")}
    if not isinstance(response, web.Response):
        # streamed (web.FileResponse, server-sent events): the body is not in hand before it is sent. The
        # response goes out as it is and is recorded without its body — refusing it would turn every file or
        # stream route into a 500 under track_all_endpoints
        return {"status_code": response.status, "headers": headers}
    raw = response.body if isinstance(response.body, (bytes, bytearray)) else (response.text or "").encode()
    result: dict[str, Any] = {"status_code": response.status, "headers": headers}
    try:
        result["body"] = bytes(raw).decode()
    except UnicodeDecodeError:
        result["body"], result["body_encoding"] = base64.b64encode(bytes(raw)).decode(), "base64"
    return result


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
        raise DefinitionError(f"the durable endpoint {request.method} {formatter} has identifiers in its "
                              "path: give it an id (e.g. @endpoints.durable(id=\"get-user\")), or every user id "
                              "would become a function")
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
                           body=body)
        fn_id = _function_id(request, options, durable)
        idempotency = request.headers.get(provider.idempotency_header)
        call = EndpointCall(provider, options, fn_id, info, idempotency=idempotency)
        if idempotency:
            replayed = await _replay_idempotent(provider, fn_id, idempotency, call.run_id)
            if replayed is not None:
                return replayed
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
        response.headers["X-Run-ID"] = call.run_id
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
        return web.json_response(outcome.public_body(call.run_id), status=500)
    mode = options.async_response or provider.async_response
    url = provider.output_url(outcome.run_id, outcome.token)
    if mode == REDIRECT:
        return web.Response(status=303, headers={"Location": url})
    if mode == TOKEN:
        return web.json_response({"run_id": outcome.run_id, "token": outcome.token, "url": url}, status=202)
    assert callable(mode)
    custom = mode(request, outcome.run_id, outcome.token)
    if not isinstance(custom, web.StreamResponse):
        raise TypeError("a custom async_response must return an aiohttp response")
    return custom


async def _replay_idempotent(provider: Provider, fn_id: str, key: str, run_id: str) -> web.StreamResponse | None:
    """A repeated request with the same idempotency key gets the recorded result (or waits for it)."""
    found = await claim_idempotent(provider, fn_id, key, run_id)
    if found is None:
        return None
    if found["status"] == "Completed" and isinstance(found["output"], dict):
        from stepflow.server.routes_endpoints import replay

        return replay(found["output"], found["run_id"])
    from stepflow.tokens import make_token

    url = provider.output_url(found["run_id"], make_token(found["run_id"], provider.signing_key))
    return web.Response(status=303, headers={"Location": url, "X-Run-ID": found["run_id"]})


async def _resume(provider: Provider, request: web.Request) -> web.StreamResponse:
    """The engine calls the endpoint again, signed, with the memoized steps: re-run the handler on them."""
    blank = request.clone()  # cloned before the body is read (aiohttp refuses afterwards); re-aimed below
    body = await request.read()
    if not provider.dev:
        try:
            signing.verify(body, request.headers.get(signing.SIGNATURE_HEADER), provider.keys or ["-"])
        except UnauthorizedError as exc:
            return web.json_response({"error": {"code": "unauthorized", "message": exc.message}}, status=401)
    resume = read_resume(body, request.path)
    if isinstance(resume, str):
        return web.json_response({"name": "InvalidResume", "message": resume}, status=400,
                                 headers={NO_RETRY_HEADER: "true"})
    document, method, path, query = resume.document, resume.method, resume.path, resume.query
    original = blank.clone(method=method, rel_url=f"{path}?{query}" if query else path)
    # the handler reads the original request's body (when it was recorded), not the engine's Input
    original._read_bytes = resume.body
    match = await request.app.router.resolve(original)
    handler = match.handler
    options: EndpointOptions | None = getattr(handler, OPTIONS_ATTR, None)
    user = getattr(handler, USER_ATTR, None)
    if options is None or user is None:
        return web.json_response({"name": "EndpointNotFound", "message": f"no durable handler for {method} {path}"},
                                 status=404, headers={NO_RETRY_HEADER: "true"})
    original._match_info = match
    info = RequestInfo(method=method, path=path, domain=provider.app_id, ip="", content_type="", query=query,
                       body=b"")
    call = EndpointCall(provider, options, resume.fn or f"{method} {path}", info, resume=document)
    token = current_call.set(call)
    try:
        from stepflow.endpoints.core import EndpointResume

        try:
            await call.execute(lambda step: _answer(user(original, step)), response_result)
        except EndpointResume as answer:
            reply = answer.reply
    finally:
        current_call.reset(token)
    return web.Response(status=reply.status, body=codec.dumps(reply.body), content_type="application/json",
                        headers={**reply.headers, "X-Run-ID": call.run_id})
