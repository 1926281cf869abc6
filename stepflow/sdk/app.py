"""`App` and the `@app.function` decorator: code functions and their options."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from stepflow.definitions.loader import parse_function
from stepflow.durations import parse_duration
from stepflow.errors import DefinitionError
from stepflow.protocol.wire import NO_RETRY_HEADER, input_problem
from stepflow.sdk.context import Context
from stepflow.sdk.execution import DEFAULT_INLINE_BUDGET, Execution, SdkResponse

Handler = Callable[[Context], Awaitable[Any]]
FAILURE_EVENT = "inngest/function.failed"   # the public name, so on_failure handlers port unchanged


@dataclass(slots=True)
class FunctionSpec:
    """A decorated function: its id, options and handler. Calling it is calling the handler."""

    id: str
    app_id: str
    name: str
    handler: Handler
    triggers: list[dict[str, Any]]
    retries: int | None = None
    cancel_on: list[dict[str, Any]] = field(default_factory=list)
    idempotency: str | None = None
    timeouts: dict[str, Any] = field(default_factory=dict)
    flow: dict[str, Any] = field(default_factory=dict)  # concurrency, throttle, … (docs/flow-control.md)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("stepflow.function"))

    def config(self, runtime: dict[str, Any]) -> dict[str, Any]:
        """The definition the server stores (checked by the same parser as workflow files)."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "app_id": self.app_id,
                               "triggers": self.triggers, "runtime": runtime}
        if self.retries is not None:
            out["retries"] = self.retries
        if self.cancel_on:
            out["cancel_on"] = self.cancel_on
        if self.idempotency:
            out["idempotency"] = self.idempotency
        if self.timeouts:
            out["timeouts"] = self.timeouts
        out.update(self.flow)
        return out

    async def __call__(self, ctx: Context) -> Any:
        return await self.handler(ctx)


def _triggers(trigger: Any, triggers: Any) -> list[dict[str, Any]]:
    items = list(triggers or []) + ([trigger] if trigger is not None else [])
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            item = {"event": item}
        if not isinstance(item, dict):
            raise DefinitionError(f"a trigger must be stepflow.event(...) or stepflow.cron(...), got {item!r}")
        out.append(dict(item))
    return out


def _duration(value: str | float | timedelta) -> float:
    return parse_duration(value)


def _flow_options(**options: Any) -> dict[str, Any]:
    """The flow-control options given, as plain data (a timedelta period or timeout becomes seconds)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = {k: _duration(v) if isinstance(v, timedelta) else v for k, v in value.items()}
        out[name] = value
    return out


class App:
    """A group of code functions served together (one HTTP endpoint, one container, one Lambda)."""

    def __init__(self, app_id: str, *, signing_key: str | None = None,
                 inline_budget: float = DEFAULT_INLINE_BUDGET) -> None:
        self.id = app_id
        self.signing_key = signing_key
        self.inline_budget = inline_budget
        self.functions: dict[str, FunctionSpec] = {}

    def function(self, *, id: str, trigger: Any = None, triggers: list[Any] | None = None,
                 name: str | None = None, retries: int | None = None,
                 timeouts: dict[str, str | int | float | timedelta] | None = None,
                 cancel_on: list[dict[str, Any]] | dict[str, Any] | None = None,
                 idempotency: str | None = None,
                 concurrency: int | dict[str, Any] | list[dict[str, Any]] | None = None,
                 throttle: dict[str, Any] | None = None, rate_limit: dict[str, Any] | None = None,
                 debounce: dict[str, Any] | None = None, singleton: dict[str, Any] | None = None,
                 priority: dict[str, Any] | None = None, batch_events: dict[str, Any] | None = None,
                 on_failure: Handler | None = None) -> Callable[[Handler], FunctionSpec]:
        """Declare a durable function.

        trigger(s): `stepflow.event("app/thing", if_=CEL)` or `stepflow.cron("*/5 * * * *")`.
        retries: retries per step (and for the function body), default 4 (5 attempts).
        timeouts: {"start": "1m", "finish": "1h"} — cancel a run queued or running longer than that.
        cancel_on: {"event": "app/cancelled", "if": "event.data.id == async.data.id"} (or a list of them).
        idempotency: CEL over `event`; one run per key per 24 h.
        concurrency, throttle, rate_limit, debounce, singleton, priority, batch_events: flow control
            (docs/flow-control.md); a batch's events are `ctx.events`,
            e.g. concurrency=[{"limit": 5, "key": "event.data.tenant_id"}], throttle={"limit": 10, "period": "1m"}.
        on_failure: an async handler called (as its own function) when a run of this one fails.
        """
        def decorate(handler: Handler) -> FunctionSpec:
            if not inspect.iscoroutinefunction(handler):
                raise DefinitionError(f"function {id!r}: the handler must be an `async def` taking ctx")
            if id in self.functions:
                raise DefinitionError(f"function {id!r} is declared twice in app {self.id!r}")
            spec = FunctionSpec(
                id=id, app_id=self.id, name=name or id, handler=handler, triggers=_triggers(trigger, triggers),
                retries=retries,
                cancel_on=[cancel_on] if isinstance(cancel_on, dict) else list(cancel_on or []),
                idempotency=idempotency,
                timeouts={k: _duration(v) for k, v in (timeouts or {}).items()},
                flow=_flow_options(concurrency=concurrency, throttle=throttle, rate_limit=rate_limit,
                                   debounce=debounce, singleton=singleton, priority=priority,
                                   batch_events=batch_events),
                logger=logging.getLogger(f"stepflow.function.{id}"))
            parse_function(spec.config({"type": "inprocess", "handler": f"{self.id}:{id}"}),
                           source=f"{handler.__module__}.{handler.__qualname__}")  # fail at import, not at run
            self.functions[id] = spec
            if on_failure is not None:
                failure_id = f"{id}-failure"
                self.function(id=failure_id, name=f"{spec.name} (on failure)",
                              trigger={"event": FAILURE_EVENT, "if": f"event.data.function_id == '{id}'"},
                              retries=retries)(on_failure)
            return spec

        return decorate

    async def call(self, function_id: str, request: dict[str, Any]) -> SdkResponse:
        """Run one call of a function under the SDK protocol."""
        spec = self.functions.get(function_id)
        if spec is None:
            return SdkResponse(404, {"name": "FunctionNotFound",
                                     "message": f"app {self.id!r} has no function {function_id!r}; it has "
                                                f"{sorted(self.functions)}"},
                               {NO_RETRY_HEADER: "true"})
        problem = input_problem(request)
        if problem is not None:
            return SdkResponse(400, {"name": "InvalidInput", "message": problem}, {NO_RETRY_HEADER: "true"})
        return await Execution(spec, request, inline_budget=self.inline_budget).run()

    def configs(self, runtime_for: Callable[[FunctionSpec], dict[str, Any]]) -> list[dict[str, Any]]:
        return [spec.config(runtime_for(spec)) for spec in self.functions.values()]
