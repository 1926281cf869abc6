"""The step tools on `ctx.step`. Each tool either replays a memoized result or reports a new step to the
execution, which decides whether to run it now (inline), plan it for a call of its own (parallel steps), or
hand it to the engine (sleeps, waits, invocations, events, steps on other runtimes)."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from stepflow.durations import parse_duration
from stepflow.errors import InvalidStepUsage, StepError
from stepflow.protocol.wire import Op, hash_step_id
from stepflow.sdk.context import Event
from stepflow.sdk.serialization import decode_as, return_annotation, to_json_value

if TYPE_CHECKING:
    from stepflow.sdk.execution import Execution

T = TypeVar("T")
P = ParamSpec("P")

# Set while a step's callable executes, in its task's context only: a step reached from inside it is nested,
# while a step reached by a sibling task (asyncio.gather) at the same time is merely parallel.
_INSIDE_STEP: contextvars.ContextVar[bool] = contextvars.ContextVar("stepflow_inside_step", default=False)


def inside_step() -> bool:
    """True in code called by a step's callable (which runs for real, once per attempt)."""
    return _INSIDE_STEP.get()



@dataclass(slots=True)
class FoundStep:
    """A step reached for the first time in this call."""

    hashed: str
    display: str
    op: str                                   # StepRun, Sleep, WaitForEvent, InvokeFunction, SendEvent, RunStep
    opts: dict[str, Any] | None = None
    name: str | None = None
    run: Callable[[], Awaitable[Any]] | None = None   # StepRun only: executes the user's callable
    decision: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def to_op(self) -> dict[str, Any]:
        """How this step is reported when it is not executed in this call."""
        op = "StepPlanned" if self.op == Op.STEP_RUN else self.op
        out: dict[str, Any] = {"op": op, "id": self.hashed, "displayName": self.display,
                               "name": self.name or self.display}
        if self.opts:
            out["opts"] = self.opts
        return out


def _duration_str(value: str | float | timedelta) -> str:
    seconds = parse_duration(value)
    return f"{int(seconds * 1000)}ms"


class StepTools:
    def __init__(self, execution: Execution) -> None:
        self._x = execution
        self._counts: dict[str, int] = {}

    def _ids(self, step_id: str) -> tuple[str, str]:
        if not isinstance(step_id, str) or not step_id:
            raise InvalidStepUsage("a step id must be a non-empty string")
        if _INSIDE_STEP.get():
            raise InvalidStepUsage(f"step {step_id!r} is called inside another step; steps cannot be nested")
        count = self._counts.get(step_id, 0)
        self._counts[step_id] = count + 1
        display = step_id if count == 0 else f"{step_id}:{count}"
        return hash_step_id(display), display

    def _replay(self, hashed: str, display: str) -> tuple[bool, Any]:
        memo = self._x.memo(hashed)
        if memo is None:
            return False, None
        if isinstance(memo, dict) and "error" in memo and memo.get("error") is not None:
            raise StepError(display, memo["error"])
        return True, memo.get("data") if isinstance(memo, dict) else memo

    # --- the tools ----------------------------------------------------------------------------------------

    # Typed with ParamSpec: `step.run("x", add, 1, "a")` is checked against `add`'s parameters, and its value has
    # `add`'s return type (awaited, for a coroutine function). `output_type=` is outside `fn`'s parameters
    # (PEP 612 allows no keyword between P.args and P.kwargs), hence its own overload.
    @overload
    async def run(self, step_id: str, fn: Callable[P, Awaitable[T]], /, *args: P.args,
                  **kwargs: P.kwargs) -> T: ...

    @overload
    async def run(self, step_id: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, output_type: type[T],
                  **kwargs: Any) -> T: ...

    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, output_type: Any = None,
                  **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once; its result is stored and replayed on every later call.

        Sync callables run in a worker thread so they cannot stall the event loop.
        """
        hashed, display = self._ids(step_id)
        found, value = self._replay(hashed, display)
        if found:  # only a replay needs the type (resolving annotations is not free)
            annotation = output_type if output_type is not None else return_annotation(fn)
            return decode_as(value, annotation)

        async def execute() -> Any:
            token = _INSIDE_STEP.set(True)
            try:
                if inspect.iscoroutinefunction(fn):
                    result = await fn(*args, **kwargs)
                else:
                    result = await asyncio.to_thread(fn, *args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
            finally:
                _INSIDE_STEP.reset(token)
            return result

        return await self._x.report(FoundStep(hashed, display, Op.STEP_RUN, run=execute))

    async def sleep(self, step_id: str, duration: str | float | timedelta) -> None:
        """Pause the run durably for `duration` ("10s", "2h", a timedelta, or seconds)."""
        hashed, display = self._ids(step_id)
        if self._replay(hashed, display)[0]:
            return
        until = datetime.now(UTC) + timedelta(seconds=parse_duration(duration))
        await self._x.report(FoundStep(hashed, display, Op.SLEEP, name=until.isoformat(),
                                       opts={"duration": _duration_str(duration), "until": until.isoformat()}))
        return

    async def sleep_until(self, step_id: str, until: datetime) -> None:
        """Pause the run durably until `until` (a naive datetime is taken as UTC)."""
        hashed, display = self._ids(step_id)
        if self._replay(hashed, display)[0]:
            return
        when = until if until.tzinfo else until.replace(tzinfo=UTC)
        await self._x.report(FoundStep(hashed, display, Op.SLEEP, name=when.isoformat(),
                                       opts={"until": when.isoformat()}))
        return

    async def wait_for_event(self, step_id: str, *, event: str, timeout: str | float | timedelta,
                             if_: str | None = None, match: str | None = None) -> Event | None:
        """Wait for an event named `event`; returns it, or None after `timeout`.

        `if_` is CEL over `event` (this run's trigger) and `async` (the candidate); `match="data.user_id"`
        is short for `event.data.user_id == async.data.user_id`. An event sent after this run's call that
        reached the wait began is seen even if it arrived before the wait was registered.
        """
        hashed, display = self._ids(step_id)
        found, value = self._replay(hashed, display)
        if found:
            return Event.from_dict(value) if value else None
        opts: dict[str, Any] = {"event": event, "timeout": _duration_str(timeout)}
        if if_ is not None:
            opts["if"] = if_
        if match is not None:
            opts["match"] = match
        await self._x.report(FoundStep(hashed, display, Op.WAIT_FOR_EVENT, name=event, opts=opts))
        return None  # pragma: no cover - report() never returns for a new wait

    async def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
                     timeout: str | float | timedelta | None = None, user: dict[str, Any] | None = None) -> Any:
        """Start another function with `data` as its event data and return its output (raises StepError
        if it fails, or when `timeout` passes first)."""
        hashed, display = self._ids(step_id)
        found, value = self._replay(hashed, display)
        if found:
            return value
        function_id = function if isinstance(function, str) else getattr(function, "id", None)
        if not function_id:
            raise InvalidStepUsage("invoke(function=...) takes a function id or a decorated stepflow function")
        app_id = getattr(function, "app_id", None)
        opts: dict[str, Any] = {"function_id": f"{app_id}-{function_id}" if app_id else function_id,
                                "payload": {"data": to_json_value(data or {}), "user": user}}
        if timeout is not None:
            opts["timeout"] = _duration_str(timeout)
        return await self._x.report(FoundStep(hashed, display, Op.INVOKE_FUNCTION, opts=opts))

    async def send_event(self, step_id: str, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """Send events from the function, exactly once; returns their ids."""
        hashed, display = self._ids(step_id)
        found, value = self._replay(hashed, display)
        if found:
            return list(value["ids"] if isinstance(value, dict) else value)
        items = events if isinstance(events, list) else [events]
        documents = [to_json_value(e.to_dict() if isinstance(e, Event) else e) for e in items]
        sender = self._x.send_events
        if sender is not None:
            # Sent by a step run right here. Each event gets an id derived from the run and this step unless it
            # has one, so a retried step (or a replay after a crash) sends nothing twice: the server keeps one
            # event per id.
            run_id = self._x.context.run_id
            stamped = [d if not isinstance(d, dict) or d.get("id") else {**d, "id": f"{run_id}-{hashed[:16]}-{i}"}
                       for i, d in enumerate(documents)]

            async def send() -> dict[str, list[str]]:
                return {"ids": await sender(stamped)}

            result = await self._x.report(FoundStep(hashed, display, Op.STEP_RUN, run=send))
            return list(result["ids"])
        result = await self._x.report(FoundStep(hashed, display, Op.SEND_EVENT, opts={"events": documents}))
        return list(result["ids"])

    async def remote(self, step_id: str, *, runtime: dict[str, Any], data: Any = None) -> Any:
        """Run a step on another runtime (http, docker, lambda) with the step contract; returns its body.

        A 4xx answer raises StepError; 5xx is retried by the engine.
        """
        hashed, display = self._ids(step_id)
        found, value = self._replay(hashed, display)
        if found:
            return value
        opts: dict[str, Any] = {"runtime": runtime}
        if data is not None:
            opts["data"] = to_json_value(data)
        return await self._x.report(FoundStep(hashed, display, Op.RUN_STEP, opts=opts))

    async def http(self, step_id: str, *, url: str, headers: dict[str, str] | None = None,
                   timeout: str | None = None, data: Any = None) -> Any:
        runtime: dict[str, Any] = {"type": "http", "url": url}
        if headers:
            runtime["headers"] = headers
        if timeout:
            runtime["timeout"] = timeout
        return await self.remote(step_id, runtime=runtime, data=data)

    async def docker(self, step_id: str, *, image: str, env: dict[str, str] | None = None,
                     timeout: str | None = None, memory: str | None = None, cpus: float | None = None,
                     network: bool = False, command: list[str] | None = None, data: Any = None) -> Any:
        """Run the step in a container of `image`; the Input is the command's last argument (argv[1] of the
        image's entrypoint, after `command` if given)."""
        runtime: dict[str, Any] = {"type": "docker", "image": image}
        for key, value in (("env", env), ("timeout", timeout), ("memory", memory), ("cpus", cpus),
                           ("command", command)):
            if value:
                runtime[key] = value
        if network:
            runtime["network"] = True
        return await self.remote(step_id, runtime=runtime, data=data)

    async def lambda_(self, step_id: str, *, function: str, qualifier: str | None = None,
                      timeout: str | None = None, data: Any = None) -> Any:
        runtime: dict[str, Any] = {"type": "lambda", "function": function}
        if qualifier:
            runtime["qualifier"] = qualifier
        if timeout:
            runtime["timeout"] = timeout
        return await self.remote(step_id, runtime=runtime, data=data)
