"""One call of a function under the SDK protocol (docs/sdk.md#the-protocol).

The engine calls the function with the Input `{event, events, steps, ctx}`. The function replays memoized
steps from `steps` until it reaches steps that have no result yet; this module decides what to do with them
and answers with a Response:

- `200` + output: the function returned.
- `206` + ops: step boundaries. A lone new `step.run` is executed inline and the function continues; several
  consecutive ones run in the same call (up to a time budget) and are reported together as `StepRun` ops, so a
  3-step function needs one call, not three. When the function then returns, a final `RunComplete` op carries
  its output. Steps reached together (`asyncio.gather`) are reported as `StepPlanned` and each runs in a call
  of its own (`ctx.step_id` targets it). Sleeps, waits, invocations, events and steps on other runtimes are
  reported for the engine to carry out.
- `4xx` / `5xx` + error: the function raised. 4xx (NonRetriableError, a failed step left uncaught) is final;
  5xx is retried, honouring `Retry-After`.

Each inline step's op is reported before any later step's result is recorded, in order, in one response:
the engine records them in one transaction before it calls again.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stepflow import codec
from stepflow.errors import NonDeterminismError, NonRetriableError, RetryAfterError, StepError, StepflowError
from stepflow.protocol.contract import DEFAULT_MAX_OUTPUT_BYTES
from stepflow.protocol.wire import NO_RETRY_HEADER, RETRY_AFTER_HEADER, Op
from stepflow.sdk.context import Context, Event, ReplaySafeLogger
from stepflow.sdk.serialization import encode, to_json_value
from stepflow.sdk.steps import FoundStep, StepTools, inside_step

if TYPE_CHECKING:
    from stepflow.sdk.app import FunctionSpec

MAX_STEP_LOGS = 64 * 1024     # characters of ctx.logger lines kept per step attempt
LOGS_TRUNCATED = "\n[… truncated: the step wrote more than 64 KiB of log lines]\n"
# the step (hashed id) whose callable is running: ctx.logger lines are kept with it
_LOGGING_STEP: contextvars.ContextVar[str] = contextvars.ContextVar("stepflow_logging_step", default="")
DEFAULT_INLINE_BUDGET = 1.0   # seconds of inline step execution per call before results are handed back
SETTLE_ROUNDS = 3             # loop iterations that let sibling tasks of an asyncio.gather reach their steps


@dataclass(slots=True)
class SdkResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body, "headers": self.headers}


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StepError):
        return {"name": "StepError", "message": str(exc), "stack": exc.stack, "step_id": exc.step_id,
                "cause": {"name": exc.error_name, "message": exc.error_message}}
    return {"name": type(exc).__name__, "message": str(exc),
            "stack": "".join(traceback.format_exception(exc)).rstrip()}


def output_too_large(step: str, size: int, limit: int) -> dict[str, Any]:
    return {"name": "OutputTooLarge", "code": "output_too_large", "size": size, "limit": limit,
            "message": f"step {step!r}'s output is {size} bytes encoded; the limit is {limit} bytes "
                       f"({limit / 1048576:g} MiB). Return less data (e.g. store large results elsewhere and "
                       "return a reference)"}


class Execution:
    def __init__(self, spec: FunctionSpec, request: dict[str, Any], *,
                 inline_budget: float = DEFAULT_INLINE_BUDGET,
                 on_step: Callable[[dict[str, Any]], None] | None = None,
                 send_events: Callable[[list[dict[str, Any]]], Awaitable[list[str]]] | None = None) -> None:
        self.spec = spec
        self._on_step = on_step
        # set where the function runs inside a request (durable endpoints): events are sent by a step run
        # inline, so the request need not hand its run to the engine only to send them
        self.send_events = send_events
        ctx = request.get("ctx") or {}
        self._memos: dict[str, Any] = dict(request.get("steps") or {})
        self._stack: list[str] = list((ctx.get("stack") or {}).get("stack") or []) if isinstance(
            ctx.get("stack"), dict) else list(ctx.get("stack") or [])
        self._names: dict[str, str] = dict(ctx.get("step_names") or {})
        self._unvisited: set[str] = set(self._memos)
        self._target: str | None = ctx.get("step_id") or None
        if self._target == "step":  # the public protocol's "no target"
            self._target = None
        self._budget = inline_budget
        # The engine's limit on one step's output (it may say so in ctx; the default is the engine's default).
        self._max_output_bytes = int(ctx.get("max_output_bytes") or DEFAULT_MAX_OUTPUT_BYTES)
        self._found: list[FoundStep] = []
        self._ops: list[dict[str, Any]] = []
        self._new_step = asyncio.Event()
        self._registrations = 0
        self._step_done: asyncio.Future[bool] | None = None
        raw_event = request.get("event") or {}
        self.context = Context(
            event=Event.from_dict(raw_event),
            events=[Event.from_dict(e) for e in request.get("events") or [raw_event]],
            run_id=str(ctx.get("run_id", "")),
            function_id=str(ctx.get("function_id", spec.id)),
            app_id=str(ctx.get("app_id", spec.app_id)),
            attempt=int(ctx.get("attempt", 0)),
            step=StepTools(self),
            logger=ReplaySafeLogger(spec.logger, self.is_replaying, self._keep_log),
        )
        # ctx.logger lines of this call, by the step (hashed id) they were written in ("": outside any step)
        self._logs: dict[str, str] = {}

    # --- ctx.logger lines, kept with their step -------------------------------------------------------------

    def _keep_log(self, level: int, text: str) -> None:
        key = _LOGGING_STEP.get()
        kept = self._logs.get(key, "")
        if len(kept) >= MAX_STEP_LOGS:
            return  # already full (and marked)
        line = f"{time.strftime('%H:%M:%S')} {logging.getLevelName(level)} {text}\n"
        kept += line
        if len(kept) > MAX_STEP_LOGS:
            kept = kept[:MAX_STEP_LOGS - len(LOGS_TRUNCATED)] + LOGS_TRUNCATED
        self._logs[key] = kept

    def _take_logs(self, hashed: str) -> str | None:
        """The lines written in this step, after those written before it outside any step in this call."""
        text = self._logs.pop("", "") + self._logs.pop(hashed, "")
        return text[-MAX_STEP_LOGS:] if text else None

    # --- called by the step tools -------------------------------------------------------------------------

    def memo(self, hashed: str) -> Any:
        memo = self._memos.get(hashed)
        if memo is not None or hashed in self._memos:
            self._unvisited.discard(hashed)
            return memo if memo is not None else {"data": None}
        return None

    @property
    def unreached_memos(self) -> frozenset[str]:
        """The memoized steps (hashed ids) the function has not reached in this call."""
        return frozenset(self._unvisited)

    def is_replaying(self) -> bool:
        if inside_step():
            return False  # a step's callable only runs for real
        # A call targeting one parallel step replays everything around it: the untargeted call that planned
        # the step already went through that code (and logged it).
        return bool(self._unvisited) or self._target is not None

    async def report(self, step: FoundStep) -> Any:
        """Park the caller until the execution decides about this step; returns the step's value if it was
        executed inline, and otherwise never returns (the call ends and the task is cancelled)."""
        self._found.append(step)
        self._registrations += 1
        self._new_step.set()
        verdict = await step.decision
        if verdict != "run" or step.run is None:
            await asyncio.Event().wait()
        return await self._run_inline(step)

    async def _run_inline(self, step: FoundStep) -> Any:
        assert step.run is not None
        op: dict[str, Any] = {"id": step.hashed, "displayName": step.display, "name": step.display}
        error: dict[str, Any] | None = None
        logging_step = _LOGGING_STEP.set(step.hashed)
        began = int(time.time() * 1000)
        try:
            value = await step.run()
            try:
                encoded = encode(value)
            except TypeError as exc:
                # The value cannot be stored: fail the step, not the function (which would re-run the step on
                # every retry of the call); retrying would only return the same kind of value again.
                raise NonRetriableError(str(exc)) from exc
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            error = error_body(exc)
            if isinstance(exc, StepflowError) and not exc.retryable:
                op["opts"] = {"retriable": False}  # the wire's spelling (Inngest's protocol)
            elif isinstance(exc, RetryAfterError):
                op["opts"] = {"retry_after_ms": int(exc.retry_after * 1000)}
        else:
            if len(encoded) > self._max_output_bytes:
                # Refused here, like the engine would refuse it: the function must not go on with a value that
                # is not stored (nor send it: over HTTP the whole answer would be over the limit).
                error = output_too_large(step.display, len(encoded), self._max_output_bytes)
                op["opts"] = {"retriable": False}
        finally:
            _LOGGING_STEP.reset(logging_step)
        logs = self._take_logs(step.hashed)
        if logs is not None:
            op["logs"] = logs  # stepflow's engine keeps them with the step (other servers ignore the field)
        if self._on_step is not None:
            # a durable endpoint: the step ran inside the request, and its span is made from these times
            op["timing"] = {"start": began, "end": int(time.time() * 1000)}
        if error is not None:
            op.update(op=Op.STEP_ERROR, error=error)
            self._ops.append(op)
            if self._step_done is not None:
                self._step_done.set_result(False)
            await asyncio.Event().wait()
        data = codec.loads(encoded)
        op.update(op=Op.STEP_RUN, data=data)
        self._ops.append(op)
        if self._on_step is not None:
            self._on_step(op)  # e.g. a durable endpoint checkpoints it in the background, right away
        # From now on the step is memoized for this call too (a later replay in this call would see it).
        self._memos[step.hashed] = {"data": data}
        if self._step_done is not None:
            self._step_done.set_result(True)
        return value

    # --- the call -----------------------------------------------------------------------------------------

    async def run(self) -> SdkResponse:
        started = time.monotonic()
        task = asyncio.ensure_future(self.spec.handler(self.context))
        try:
            while True:
                await self._settle(task)
                if task.done():
                    break
                found, self._found = self._found, []
                if self._target is not None:
                    # A call for one planned parallel step: run it (if reached) and report only it.
                    step = next((f for f in found if f.hashed == self._target), None)
                    if step is not None and step.op == Op.STEP_RUN:
                        await self._execute_inline(step, task)
                    break
                self._check_determinism(found)
                if len(found) == 1 and found[0].op == Op.STEP_RUN and time.monotonic() - started < self._budget:
                    if await self._execute_inline(found[0], task):
                        continue
                    break
                self._ops.extend(f.to_op() for f in found)
                break
        except NonDeterminismError as exc:
            task.cancel()
            return SdkResponse(400, error_body(exc), {NO_RETRY_HEADER: "true"})
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return self._response(task)

    async def _execute_inline(self, step: FoundStep, task: asyncio.Future[Any]) -> bool:
        """Let the parked step run its callable; True when it succeeded and the function may go on."""
        self._step_done = asyncio.get_running_loop().create_future()
        step.decision.set_result("run")
        done, _ = await asyncio.wait({self._step_done, task}, return_when=asyncio.FIRST_COMPLETED)
        if self._step_done in done:
            return self._step_done.result()
        return True

    async def _settle(self, task: asyncio.Future[Any]) -> None:
        """Return once the function has finished, or is parked on new steps with no more arriving."""
        while not task.done():
            if self._found:
                seen = self._registrations
                for _ in range(SETTLE_ROUNDS):
                    await asyncio.sleep(0)
                if task.done() or self._registrations == seen:
                    return
                continue
            self._new_step.clear()
            waiter = asyncio.ensure_future(self._new_step.wait())
            try:
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def _check_determinism(self, found: list[FoundStep]) -> None:
        if not found or not self._unvisited:
            return
        expected = next((h for h in self._stack if h in self._unvisited), next(iter(self._unvisited)))
        name = self._names.get(expected, expected)
        raise NonDeterminismError(
            f"the function's code changed during this run: it reached step {found[0].display!r} where the run "
            f"had already recorded step {name!r}. Give changed or reordered steps new ids; runs started "
            "before a change keep replaying the steps they recorded")

    def _response(self, task: asyncio.Future[Any]) -> SdkResponse:
        if task.cancelled() or not task.done():
            return SdkResponse(206, self._ops)
        exc = task.exception()
        if exc is None:
            try:
                output = to_json_value(task.result())
            except TypeError as error:
                # Not storable: a retry would return the same kind of value, so fail now, naming the problem.
                return SdkResponse(400, error_body(error), {NO_RETRY_HEADER: "true"})
            if self._ops:
                return SdkResponse(206, [*self._ops, {"op": Op.RUN_COMPLETE, "data": output}])
            return SdkResponse(200, output)
        if self._ops:
            # record what ran first; the next call replays them and meets the error again
            return SdkResponse(206, self._ops)
        if isinstance(exc, StepflowError) and not exc.retryable:  # NonRetriableError, StepError, …
            return SdkResponse(400, error_body(exc), {NO_RETRY_HEADER: "true"})
        headers = {}
        if isinstance(exc, RetryAfterError):
            # whole seconds on the wire: round up, so the retry never comes earlier than asked
            headers[RETRY_AFTER_HEADER] = str(max(1, math.ceil(exc.retry_after)))
        return SdkResponse(500, error_body(exc), headers)
