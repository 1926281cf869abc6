"""Durable endpoints, framework-neutral core: one request's durable execution.

A request to a durable handler becomes a run. Its steps run inline through the SDK's execution machinery
(memoized, typed, retried) and each finished step is checkpointed in the background; the final response is
checkpointed too. When the handler reaches `step.sleep` / `step.wait_for_event`, or a step fails and must be
retried, the request stops there: the run is handed to the engine (which later calls the endpoint again with
the memoized steps, signed) and the caller gets the async response (a redirect to a URL that blocks until the
run ends and replays the final response, a token, or a custom response).

Everything here is framework-neutral, and imports neither the engine nor the server: the request
(`RequestInfo`), the execution (`EndpointCall`), the async response (`render_async_response`) and idempotent
repeats (`idempotent_response`); the HTTP records are in `records.py`, resume calls in `resume.py`. The aiohttp
and ASGI adapters only translate between these records and their framework.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from stepflow.endpoints.checkpointer import Checkpointer
from stepflow.endpoints.records import (
    HttpResponse,
    body_fields,
    replayed_response,
)
from stepflow.errors import CheckpointError, ConfigError, DefinitionError
from stepflow.ids import new_ulid
from stepflow.protocol.wire import REQUEST_EVENT, RUN_ID_HEADER, Op
from stepflow.sdk.app import FunctionSpec
from stepflow.sdk.execution import Execution, SdkResponse, error_body
from stepflow.sdk.steps import StepTools
from stepflow.tokens import make_token

log = logging.getLogger("stepflow.endpoints")
REDIRECT = "redirect"
TOKEN = "token"
AsyncResponse = str | Callable[..., Any]  # "redirect" | "token" | fn(request, run_id, token) -> response
# the marks `@endpoints.durable` leaves on the handler it wraps: its options, and the user's handler
OPTIONS_ATTR = "__stepflow_endpoint__"
USER_ATTR = "__stepflow_user_handler__"

current_call: contextvars.ContextVar[EndpointCall | None] = contextvars.ContextVar("stepflow_endpoint",
                                                                                     default=None)


@dataclass(slots=True)
class EndpointOptions:
    id: str | None = None
    omit_request_body: bool = False
    omit_response_body: bool = False
    async_response: AsyncResponse | None = None


@dataclass(slots=True)
class RequestInfo:
    method: str
    path: str
    domain: str
    ip: str
    content_type: str
    query: str
    body: bytes
    traceparent: str | None = None   # the caller's W3C trace context: the request's run continues its trace

    def event_data(self, fn_id: str, omit_body: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"fn": fn_id, "method": self.method, "path": self.path, "domain": self.domain,
                                "ip": self.ip, "content_type": self.content_type, "query_params": self.query}
        if not omit_body:
            data.update(body_fields(self.body))
        return data


@dataclass(slots=True)
class Final:
    """The handler finished: its response (framework object) and the recorded API result."""

    response: Any
    result: dict[str, Any]


@dataclass(slots=True)
class GoneAsync:
    run_id: str
    token: str


@dataclass(slots=True)
class Failed:
    reply: SdkResponse

    def public_body(self, run_id: str) -> dict[str, Any]:
        """What the API's caller sees: no stack trace nor message (they may hold secrets, and the framework
        would not show them either); the error is recorded with the run and logged."""
        return {"error": {"code": "internal_error",
                          "message": f"the endpoint failed; its error is recorded with run {run_id}"},
                "run_id": run_id}

    def response(self, run_id: str) -> HttpResponse:
        return HttpResponse.json(self.public_body(run_id), 500)


class EndpointResumeInterrupt(BaseException):
    """Control flow, not an error: in a resume call the handler's outcome is the SDK answer to the engine,
    not a response to a user; raised through the web framework to the middleware, which sends `reply`."""

    def __init__(self, reply: SdkResponse) -> None:
        self.reply = reply


class EndpointAsyncInterrupt(BaseException):
    """Control flow, not an error: the handler went asynchronous; raised through the web framework to the
    middleware, which answers the async response for `outcome`."""

    def __init__(self, outcome: GoneAsync) -> None:
        self.outcome = outcome


@dataclass(slots=True)
class Provider:
    """What `endpoints.setup()` returns: the middlewares, the checkpointer and the settings."""

    domain: str
    base_url: str
    signing_key: str | None
    signing_key_fallback: str | None
    track_all_endpoints: bool = False
    async_response: AsyncResponse = REDIRECT
    dev: bool = False
    idempotency_header: str = "Idempotency-Key"
    before: list[Callable[[Any], Any]] = field(default_factory=list)
    after: list[Callable[[Any, Any], Any]] = field(default_factory=list)
    checkpointer: Checkpointer = field(init=False)
    # (function id, idempotency key) → run id of the request executing it in this process right now
    inflight: dict[tuple[str, str], str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.checkpointer = Checkpointer(self.base_url, self.signing_key)

    @property
    def app_id(self) -> str:
        return self.domain.split("://", 1)[-1].rstrip("/")

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.signing_key, self.signing_key_fallback) if k]

    def output_url(self, run_id: str, token: str) -> str:
        return f"{self.base_url}/v1/runs/{run_id}/output?token={token}"

    async def wait(self, timeout: float | None = None) -> bool:
        """Drain the checkpoints still buffered (call it at shutdown). False if `timeout` passed first."""
        return await self.checkpointer.wait(timeout)

    async def close(self) -> None:
        await self.checkpointer.close()

    @property
    def aiohttp_middleware(self) -> Any:
        from stepflow.endpoints.aiohttp_middleware import make_middleware

        return make_middleware(self)

    @property
    def asgi(self) -> Any:
        from stepflow.endpoints.asgi import make_asgi_middleware

        return make_asgi_middleware(self)


class EndpointCall:
    """One request to a durable handler (live) or one engine call resuming it (resume)."""

    def __init__(self, provider: Provider, options: EndpointOptions, fn_id: str, request: RequestInfo,
                 resume: dict[str, Any] | None = None, idempotency: str | None = None,
                 run_id: str | None = None) -> None:
        self.provider = provider
        self.options = options
        self.fn_id = fn_id
        self.request = request
        self.resume = resume
        self.idempotency = idempotency
        self.omit_response_body = options.omit_response_body
        self.run_id = run_id or str((resume or {}).get("ctx", {}).get("run_id") or new_ulid())
        self.started_ms = int(time.time() * 1000)
        if resume is not None:
            # The run's duration runs from the original request, not from this resume call: the run id is a
            # ULID this middleware made when the request arrived, and it carries that instant.
            try:
                self.started_ms = min(self.started_ms, ULID.from_str(self.run_id).milliseconds)
            except ValueError:
                pass

    def _spec(self, handler: Callable[[StepTools], Awaitable[Any]],
              to_result: Callable[[Any], dict[str, Any]], keep: dict[str, Any]) -> FunctionSpec:
        async def run(ctx: Any) -> dict[str, Any]:
            try:
                response = await handler(ctx.step)
            except Exception as exc:
                keep["error"] = exc  # after inline steps the SDK answer carries only their ops, not this
                raise
            keep["response"] = response
            return self.result(to_result(response), store_body=True)

        return FunctionSpec(id=self.fn_id, app_id=self.provider.app_id, name=self.fn_id, handler=run, triggers=[])

    def result(self, raw: dict[str, Any], *, store_body: bool) -> dict[str, Any]:
        out = dict(raw)
        out["duration_ms"] = max(0, int(time.time() * 1000) - self.started_ms)
        if not store_body:
            out.pop("body", None)
            out.pop("body_encoding", None)
        return out

    async def resume_reply(self, handler: Callable[[StepTools], Awaitable[Any]],
                           to_result: Callable[[Any], dict[str, Any]]) -> SdkResponse:
        """A resume call: the handler run on the memoized steps, as the SDK answer to the engine."""
        assert self.resume is not None
        return await Execution(self._spec(handler, to_result, {}), self.resume).run()

    async def execute(self, handler: Callable[[StepTools], Awaitable[Any]],
                      to_result: Callable[[Any], dict[str, Any]]) -> Final | GoneAsync | Failed:
        """Run the handler of a live request. In a resume call, raise EndpointResumeInterrupt with the SDK
        answer (through the web framework, up to the middleware that sends it)."""
        if self.resume is not None:
            raise EndpointResumeInterrupt(await self.resume_reply(handler, to_result))
        keep: dict[str, Any] = {}
        spec = self._spec(handler, to_result, keep)
        checkpointer = self.provider.checkpointer
        await checkpointer.put({"op": "run", "run_id": self.run_id, "fn_id": self.fn_id, "app_id": self.provider.app_id,
                                "url": self.endpoint_url, "started_at": self.started_ms,
                                "idempotency": self.idempotency, "traceparent": self.request.traceparent,
                                "event": {"data": self.request.event_data(self.fn_id, self.options.omit_request_body)}})
        document = {"event": {"name": REQUEST_EVENT, "data": {}}, "steps": {},
                    "ctx": {"run_id": self.run_id, "function_id": self.fn_id, "attempt": 0}}

        def step_done(op: dict[str, Any]) -> None:
            checkpointer.put_soon({"op": "steps", "run_id": self.run_id, "steps": [op]})

        async def send_events(events: list[dict[str, Any]]) -> list[str]:
            # the request waits for the server to store them: their ids are the step's value
            result = await checkpointer.call({"op": "send", "run_id": self.run_id, "events": events})
            return list(result["ids"])

        reply = await Execution(spec, document, inline_budget=math.inf, on_step=step_done,
                                send_events=send_events).run()
        ops = reply.body if reply.status == 206 and isinstance(reply.body, list) else []
        if reply.status == 200 or (ops and ops[-1].get("op") == Op.RUN_COMPLETE):
            output = reply.body if reply.status == 200 else ops[-1].get("data")
            await checkpointer.put({"op": "response", "run_id": self.run_id,
                                    "result": self.result(output, store_body=not self.omit_response_body)})
            return Final(response=keep.get("response"), result=output)
        if reply.status == 206 and "error" in keep and not any(op.get("op") != Op.STEP_RUN for op in ops):
            # The handler itself raised after some steps ran inline (no sleep, wait or failing step left for
            # the engine): that is the request's answer, as when it raises before any step. Handing the run
            # to the engine would answer the caller with a redirect while the engine re-ran the raising
            # handler through all its retries.
            reply = SdkResponse(500, error_body(keep["error"]))
        elif reply.status == 206:
            pending = [op for op in ops if op.get("op") != Op.STEP_RUN]
            await checkpointer.put({"op": "async", "run_id": self.run_id, "ops": pending,
                                    "started_at": self.started_ms})
            return GoneAsync(run_id=self.run_id, token=make_token(self.run_id, self.provider.signing_key))
        error = reply.body if isinstance(reply.body, dict) else {"message": str(reply.body)}
        log.error("durable endpoint %s failed (run %s): %s", self.fn_id, self.run_id,
                  error.get("stack") or error.get("message"))
        await checkpointer.put({"op": "response", "run_id": self.run_id,
                                "result": self.result({"status_code": 500, "headers": {}, "error": error},
                                                      store_body=False)})
        return Failed(reply=reply)

    @property
    def endpoint_url(self) -> str:
        """Where the engine calls to resume: the domain (https unless it names its scheme) and the path."""
        domain = self.provider.domain
        base = domain if "://" in domain else f"https://{domain}"
        return f"{base.rstrip('/')}{self.request.path}"


async def claim_idempotent(provider: Provider, fn_id: str, key: str, run_id: str) -> dict[str, Any] | None:
    """The run that an earlier request with this idempotency key became — `{"run_id", "status", "output"}` —
    or None: then this request (`run_id`) holds the key in this process until `release_idempotent`.

    The key is held before the server is asked: a duplicate arriving meanwhile (a client retrying at once)
    is sent to the first request's run instead of looking, finding nothing yet, and running the steps again.
    """
    holder = provider.inflight.get((fn_id, key))
    if holder is not None:
        return {"run_id": holder, "status": "Running", "output": None}
    provider.inflight[(fn_id, key)] = run_id
    try:
        found = await find_idempotent(provider, fn_id, key)
    except BaseException:
        release_idempotent(provider, fn_id, key, run_id)
        raise
    if found is not None:
        release_idempotent(provider, fn_id, key, run_id)
    return found


def release_idempotent(provider: Provider, fn_id: str, key: str, run_id: str) -> None:
    if provider.inflight.get((fn_id, key)) == run_id:
        del provider.inflight[(fn_id, key)]


async def find_idempotent(provider: Provider, fn_id: str, key: str) -> dict[str, Any] | None:
    """The run that an earlier request with this idempotency key became, as the server knows it."""
    import aiohttp

    headers = {"Authorization": f"Bearer {provider.signing_key}"} if provider.signing_key else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for look in range(2):
            async with session.get(f"{provider.base_url}/v1/checkpoints/idempotency",
                                   params={"fn_id": fn_id, "key": key},
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 200:
                    found: dict[str, Any] = (await resp.json())["data"]
                    return found
                if resp.status != 404:
                    raise CheckpointError(f"stepflow idempotency lookup failed ({resp.status}): "
                                          f"{(await resp.text())[:300]}")
            if look or provider.checkpointer.pending() == 0:
                return None
            # The first request's run may still be in our own buffer (e.g. it finished an instant ago): once
            # it is stored, look again — answering "none" here would run the handler (and its steps) twice.
            await provider.wait(5)
    return None


def idempotent_response(provider: Provider, found: dict[str, Any]) -> HttpResponse:
    """The answer to a repeated request whose idempotency key already has a run: the recorded response, or a
    redirect to the output URL while that run is still going."""
    run_id = str(found["run_id"])
    if found.get("status") == "Completed" and isinstance(found.get("output"), dict):
        return replayed_response(found["output"], run_id)
    url = provider.output_url(run_id, make_token(run_id, provider.signing_key))
    return HttpResponse(303, {"Location": url, RUN_ID_HEADER: run_id})


def render_async_response(provider: Provider, options: EndpointOptions, outcome: GoneAsync,
                          request: Any) -> Any:
    """The caller's answer when the handler went asynchronous: an HttpResponse for "redirect" and "token",
    else whatever the endpoint's callable returns for `request` (a response of the adapter's framework)."""
    mode = options.async_response or provider.async_response
    url = provider.output_url(outcome.run_id, outcome.token)
    if mode == REDIRECT:
        return HttpResponse(303, {"Location": url, RUN_ID_HEADER: outcome.run_id})
    if mode == TOKEN:
        return HttpResponse.json({"run_id": outcome.run_id, "token": outcome.token, "url": url}, 202,
                                 {RUN_ID_HEADER: outcome.run_id})
    if not callable(mode):
        raise ConfigError(f"async_response must be {REDIRECT!r}, {TOKEN!r} or a callable, not {mode!r}")
    return mode(request, outcome.run_id, outcome.token)


def identifiers_error(route: str) -> DefinitionError:
    """A durable endpoint without an id on a path with identifiers: each value would become a function."""
    return DefinitionError(f"the durable endpoint {route} has identifiers in its path: give it an id (e.g. "
                           "@endpoints.durable(id=\"get-user\")), or every user id would become a function")


def update_omit_response_body(omit: bool) -> None:
    """Change, during a durable handler, whether its response body is recorded (e.g. keep it only for errors)."""
    call = current_call.get()
    if call is not None:
        call.omit_response_body = omit
