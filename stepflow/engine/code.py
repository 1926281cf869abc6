"""Driving code functions (SDK protocol, docs/sdk.md#the-protocol) from the engine side.

A code run is a sequence of *calls*: the engine sends the Input with every memoized step, the SDK answers
200 (done), 206 (ops) or an error. This module turns each answer into one `Advance`, applied in the same
transaction that consumes the call's job — so every reported step is stored exactly once, and what comes
next is queued atomically with it.

The run is called again only when nothing of it is pending: parallel steps (`asyncio.gather`) all settle
before the function replays, so no step is ever started twice by overlapping replays.
"""

from __future__ import annotations

from typing import Any

from stepflow import codec
from stepflow.definitions import FunctionDef
from stepflow.engine.ops import CallContext, apply_ops, attempts_text, too_large
from stepflow.errors import NoProgress

__all__ = ["CallContext", "NoProgress", "advance_after_call", "build_call_input", "build_remote_input",
           "failure_event", "memos"]
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.runs import new_run
from stepflow.ids import new_ulid
from stepflow.protocol import wire
from stepflow.protocol.contract import StepResponse
from stepflow.store.records import (
    Advance,
    EventRecord,
    JobKind,
    NewEvent,
    NewJob,
    RunState,
    RunStatus,
    StepStatus,
    StepWrite,
)

FAILURE_EVENT = "inngest/function.failed"

def memos(state: RunState) -> dict[str, Any]:
    """The `steps` of a code function's Input: `{hashed id: {"data": …} | {"error": …}}`."""
    out: dict[str, Any] = {}
    for sid, step in state.steps.items():
        if step.kind is None:
            continue
        if step.status is StepStatus.COMPLETED:
            out[sid] = wire.data_memo(step.output)
        elif step.status is StepStatus.FAILED:
            out[sid] = {"error": wire.memo_error(step.error or {"name": "Error", "message": "step failed"})}
    return out


def build_call_input(fn: FunctionDef, state: RunState, job_attempt: int, max_attempts: int,
                     target: str | None, max_output_bytes: int | None = None,
                     version: int = wire.SDK_CHOOSES_VERSION) -> dict[str, Any]:
    settled = sorted((s for s in state.steps.values() if s.kind is not None and s.seq > 0), key=lambda s: s.seq)
    extra: dict[str, Any] = {"function_id": fn.id, "app_id": fn.app_id,
                             "step_names": {s.step_id: s.name for s in settled if s.name}}
    if max_output_bytes is not None:
        extra["max_output_bytes"] = max_output_bytes  # so the SDK refuses an oversized step before going on
    steps = memos(state)
    # The JS SDK waits for every memo listed in the stack (it hangs if one is missing): list each exactly once.
    stack = [s.step_id for s in settled if s.step_id in steps]
    stack += sorted(set(steps) - set(stack))
    return wire.call_input(event=state.event or {}, steps=steps, run_id=state.run.id,
                               attempt=job_attempt, max_attempts=max_attempts, stack=stack,
                               target=target, version=version, extra_ctx=extra, events=state.events)


def build_remote_input(fn: FunctionDef, state: RunState, step_id: str, attempt: int, max_attempts: int,
                       data: Any) -> bytes:
    """The step contract's Input for a RunStep: completed steps by their names, as {status, body}."""
    steps = {(s.name or sid): {"status": 200, "body": (s.output or {}).get("data")}
             for sid, s in state.steps.items() if s.kind is not None and s.status is StepStatus.COMPLETED}
    step = state.steps.get(step_id)
    document: dict[str, Any] = {
        "event": state.event or {}, "events": state.events or [state.event or {}], "steps": steps,
        "ctx": {"run_id": state.run.id, "function_id": fn.id, "app_id": fn.app_id,
                "step_id": step.name if step and step.name else step_id, "attempt": attempt,
                "max_attempts": max_attempts}}
    if data is not None:
        document["data"] = data
    return codec.dumps(document)


def advance_after_call(state: RunState, cc: CallContext, response: StepResponse | None,
                       error: dict[str, Any] | None, retryable: bool, retry_after: float | None) -> Advance:
    """Decide what follows one call of a code function."""
    now = cc.now
    offending: tuple[str, str | None] | None = None
    if response is not None and response.status == 206:
        try:
            return apply_ops(state, cc, response.body, retry_after)
        except NoProgress as exc:
            response, error, retryable, retry_after = None, {**exc.error, "attempt": cc.attempt}, True, None
            if exc.step_id is not None and exc.step_id != cc.target and exc.step_id not in state.busy_steps:
                offending = (exc.step_id, exc.name)
    if response is not None and 200 <= response.status < 300:
        size = len(codec.dumps(response.body))
        if size > cc.max_output_bytes:
            return Advance(finish=RunStatus.FAILED, error=too_large("the function's output", size, cc))
        return Advance(finish=RunStatus.COMPLETED, output=response.body)
    if response is not None:
        body = response.body
        error = {"code": "function_error", "status": response.status, "attempt": cc.attempt}
        if isinstance(body, dict):
            error.update({k: body[k] for k in ("name", "message", "stack", "step_id", "cause") if k in body})
            if isinstance(body.get("code"), str) and "code" not in error:
                error["sdk_code"] = body["code"]
        else:
            error["message"] = f"the function answered status {response.status}: {str(body)[:500]}"
        error.setdefault("message", f"the function answered status {response.status}")
        retryable = retryable and response.status >= 500
    assert error is not None
    if retryable and cc.attempt + 1 < cc.max_attempts:
        delay = cc.backoff(cc.attempt, retry_after)
        # a retried call keeps its target, and carries the attempt number the SDK will see
        # (a targeted call's job is filed under its step, so the step counts as pending while it waits)
        decision = Advance(jobs=[NewJob(cc.target or "", now + int(delay * 1000), JobKind.CALL,
                                        {"target": cc.target} if cc.target else None, step_row=False,
                                        attempt=cc.attempt + 1)])
        if cc.target:
            decision.steps.append(StepWrite(step_id=cc.target, status=StepStatus.SCHEDULED, error=error,
                                            attempts=cc.attempt + 1, scheduled_at=now + int(delay * 1000)))
        elif offending is not None:  # the step the answer was about: its record shows why the run is retried
            decision.steps.append(StepWrite(step_id=offending[0], status=StepStatus.SCHEDULED, error=error,
                                            name=offending[1], scheduled_at=now + int(delay * 1000)))
        return decision
    if retryable:
        error["message"] += f" (gave up after {attempts_text(cc.max_attempts)})"
    return Advance(finish=RunStatus.FAILED, error=error)


def failure_event(state: RunState, error: dict[str, Any] | None, functions: FunctionRegistry, now: int) -> NewEvent:
    """`inngest/function.failed`, emitted in the transaction that fails a run; starts on_failure handlers."""
    event = EventRecord(id=new_ulid(), name=FAILURE_EVENT, ts=now, received_at=now, data={
        "function_id": state.run.function_id, "run_id": state.run.id, "error": error or {},
        "event": state.event or {}})
    payload = event.to_dict()
    runs = [new_run(fn, version, payload, now) for version, fn in functions.matching(FAILURE_EVENT, payload)]
    return NewEvent(event=event, runs=runs)

