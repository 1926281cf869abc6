"""Applying an SDK's ops (a 206 answer) to a run: one handler per op, each deciding what the op asks for.

`apply_ops` checks each op (well-formed, about a step that is not already settled or pending, consistent with
the call's target) and hands it to the handler of its kind in `HANDLERS`. A handler adds what the op asks for
to the decision — a stored result, a retry, a planned call, a sleep, a wait, an invocation, events — and says
whether the function must then be called again. An answer that changes nothing raises `NoProgress`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from stepflow import codec
from stepflow.definitions import FunctionDef, parse_runtime
from stepflow.durations import parse_duration
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.runs import new_run
from stepflow.errors import DefinitionError, ExpressionError, InvalidRequestError, NoProgress
from stepflow.events import validate_event
from stepflow.expressions import Expression
from stepflow.ids import new_ulid
from stepflow.observability.tracing import new_span_id
from stepflow.protocol.wire import UNSUPPORTED_OPS, Op
from stepflow.store.records import (
    Advance,
    EventRecord,
    JobKind,
    NewEvent,
    NewJob,
    NewPause,
    RunState,
    RunStatus,
    SpanRecord,
    StepRecord,
    StepStatus,
    StepWrite,
)

INVOKED_EVENT = "inngest/function.invoked"


class CallContext:
    """What the advance of one call needs besides the run's state."""

    def __init__(self, fn: FunctionDef, functions: FunctionRegistry, *, attempt: int, max_attempts: int,
                 target: str | None, call_started: int, now: int, max_output_bytes: int,
                 backoff: Any, fast_forward: bool = False, tracing: bool = True) -> None:
        self.fn = fn
        self.functions = functions
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.target = target
        self.call_started = call_started
        self.now = now
        self.max_output_bytes = max_output_bytes
        self.backoff = backoff  # (attempt, retry_after seconds or None) -> delay seconds
        self.fast_forward = fast_forward
        self.tracing = tracing  # sleeps and waits become spans of the run's trace


class Effect(Enum):
    """What an applied op means for the function."""

    NONE = "none"          # nothing to call it for: what the op asked for is pending (a sleep, a planned step)
    CALL_AGAIN = "call"    # its result is memoized: call the function again once nothing else is pending
    STOP = "stop"          # call again, and ignore the rest of this answer (it built on a value not stored)


@dataclass(slots=True)
class OpInput:
    """One op of an answer, checked, with what its handler needs."""

    state: RunState
    cc: CallContext
    decision: Advance
    sid: str                        # the hashed step id
    name: str                       # the user's step id
    kind: Op
    op: dict[str, Any]
    opts: dict[str, Any]
    existing: StepRecord | None
    retry_after: float | None       # the answer's Retry-After (the JS SDK's RetryAfterError in a step)


# ops that report a step's outcome (as opposed to asking the engine to do something for the step)
_OUTCOMES = {Op.STEP_RUN, Op.STEP, Op.STEP_ERROR, Op.STEP_FAILED}


def apply_ops(state: RunState, cc: CallContext, ops: Any, retry_after: float | None = None) -> Advance:
    """Turn a 206 answer into a decision. Raises NoProgress when the answer changes nothing."""
    decision = Advance()
    if not isinstance(ops, list):
        raise NoProgress("protocol_error", f"a 206 answer must carry a list of ops, got {type(ops).__name__}")
    if not ops:
        raise NoProgress("no_progress", "the SDK answered 206 with no op: nothing ran and nothing was planned"
                         + (f" (the call targeted step {_step_name(state, cc.target)!r})" if cc.target else ""))
    call_again = False
    progressed = False
    stale: list[str] = []
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise NoProgress("protocol_error", f"malformed op {str(op)[:200]}: an op is an object with 'op'")
        kind_raw = op["op"]
        if kind_raw == Op.RUN_COMPLETE:
            _run_complete(cc, decision, op)
            progressed = True
            continue
        if kind_raw == Op.DISCOVERY_REQUEST:
            call_again = progressed = True  # the SDK asks to be called again to go on
            continue
        item = _checked(state, cc, decision, op, retry_after, stale)
        if item is None:
            continue
        progressed = True
        effect = HANDLERS[item.kind](item)
        call_again |= effect is not Effect.NONE
        if effect is Effect.STOP:
            break
    if not progressed:
        raise NoProgress("no_progress", "the answer changed nothing: " + "; ".join(stale),
                         cc.target, _step_name(state, cc.target) if cc.target else None)
    if decision.finish is not None:
        decision.jobs, decision.pauses = [], []
    elif call_again:
        decision.call_when_idle = True
    return decision


def _checked(state: RunState, cc: CallContext, decision: Advance, op: dict[str, Any], retry_after: float | None,
             stale: list[str]) -> OpInput | None:
    """The op, ready for its handler; None (noted in `stale`) when it is about a step already settled or
    pending, or contradicts the call's target; NoProgress when it is malformed or unknown."""
    kind_raw = op["op"]
    sid = op.get("id")
    if not isinstance(sid, str) or not sid:
        raise NoProgress("protocol_error", f"op {kind_raw!r} has no step id")
    name = str(op.get("displayName") or op.get("name") or sid)
    try:
        kind = Op(kind_raw)
    except ValueError:
        raise NoProgress("unknown_op", f"the SDK answered {kind_raw!r} for step {name!r}, an op stepflow does "
                         f"not know (known: {', '.join(o.value for o in Op)})", sid, name) from None
    opts = op.get("opts") or {}
    if not isinstance(opts, dict):
        raise NoProgress("protocol_error", f"op {kind_raw!r} for step {name!r}: 'opts' must be an object",
                         sid, name)
    existing = state.steps.get(sid)
    if existing is not None and existing.status in (StepStatus.COMPLETED, StepStatus.FAILED):
        # reported again (e.g. by an overlapping call): it is stored already, once
        stale.append(f"{kind_raw} for step {name!r}, which has {existing.status.value} already")
        return None
    if sid in state.busy_steps:
        # already queued, sleeping or waiting: a second job would run it twice
        stale.append(f"{kind_raw} for step {name!r}, which is already "
                     f"{'planned' if existing is None else existing.status.value}")
        return None
    if cc.target is not None and sid == cc.target and kind is Op.STEP_PLANNED:
        stale.append(f"StepPlanned for step {name!r}, the step this call targeted: the SDK did not run it "
                     "(it reads the target from the call's ?stepId= query)")
        return None
    if cc.target is not None and kind in _OUTCOMES and sid != cc.target:
        stale.append(f"{kind_raw} for step {name!r} in a call that targeted step {_step_name(state, cc.target)!r}")
        return None
    return OpInput(state, cc, decision, sid, name, kind, op, opts, existing, retry_after)


def _run_complete(cc: CallContext, decision: Advance, op: dict[str, Any]) -> None:
    size = len(codec.dumps(op.get("data")))
    if size > cc.max_output_bytes:
        decision.finish, decision.error = RunStatus.FAILED, too_large("the function's output", size, cc)
    else:
        decision.finish, decision.output = RunStatus.COMPLETED, op.get("data")


MAX_LOGS = 64 * 1024  # characters of log lines kept per step attempt
TRUNCATED = "\n[… truncated: the step wrote more than 64 KiB of log lines]\n"


# --- the handlers, one per op ---------------------------------------------------------------------------------


def _step_ran(x: OpInput) -> Effect:
    data = x.op.get("data")
    size = len(codec.dumps(data))
    attempt = _step_attempt(x.cc, x.sid, x.existing)
    if size > x.cc.max_output_bytes:
        x.decision.steps.append(StepWrite(x.sid, StepStatus.FAILED, name=x.name, kind="run", ended_at=x.cc.now,
                                          error=too_large(f"step {x.name!r}'s output", size, x.cc),
                                          attempts=attempt + 1))
        # Whatever the function did after this step (later inline steps, its return) used a value that is not
        # stored: drop it. The next call replays and meets the failed step as a StepError.
        return Effect.STOP
    x.decision.steps.append(StepWrite(x.sid, StepStatus.COMPLETED, name=x.name, kind="run", output={"data": data},
                                      ended_at=x.cc.now, attempts=attempt + 1, logs=op_logs(x.op)))
    return Effect.CALL_AGAIN


def _step_errored(x: OpInput) -> Effect:
    final = x.kind is Op.STEP_FAILED
    return Effect.CALL_AGAIN if _step_error(x.cc, x.decision, x.sid, x.name, x.op, x.opts, x.existing,
                                            final=final, retry_after=x.retry_after) else Effect.NONE


def _step_planned(x: OpInput) -> Effect:
    x.decision.jobs.append(NewJob(x.sid, x.cc.now, JobKind.CALL, {"target": x.sid}, name=x.name, step_kind="run"))
    return Effect.NONE


def _step_not_found(x: OpInput) -> Effect:
    raise NoProgress("step_not_found", f"the SDK did not reach step {x.name!r} in a call that targeted it",
                     x.sid, x.name)


def _sleep(x: OpInput) -> Effect:
    try:
        until = x.cc.now if x.cc.fast_forward else _sleep_until(x.op, x.opts, x.cc.now)
    except ValueError as exc:
        raise NoProgress("protocol_error", f"sleep {x.name!r}: {exc}", x.sid, x.name) from exc
    x.decision.jobs.append(NewJob(x.sid, until, JobKind.SLEEP, name=x.name, step_kind="sleep"))
    _waiting_span(x, f"sleep {x.name}", until)
    return Effect.NONE


def _waiting_span(x: OpInput, name: str, until: int | None, **attributes: Any) -> None:
    """A sleep or a wait as a span of the run's trace: from now to when it is due (or may time out)."""
    if x.cc.tracing and x.state.run.trace_id:
        x.decision.spans.append(SpanRecord(run_id=x.state.run.id, span_id=new_span_id(), parent_id=None,
                                           name=name, start=x.cc.now, end=until,
                                           attributes={"step.id": x.name, **attributes}))


def _wait(x: OpInput) -> Effect:
    if _wait_for_event(x.state, x.cc, x.decision, x.sid, x.name, x.op, x.opts):
        return Effect.CALL_AGAIN  # resolved at once (or refused): nothing waits
    event = x.opts.get("event") or x.op.get("name")
    _waiting_span(x, f"wait {x.name}", next((j.available_at for j in x.decision.jobs if j.step_id == x.sid), None),
                  event=str(event))
    return Effect.NONE


def _invoke_function(x: OpInput) -> Effect:
    if _invoke(x.state, x.cc, x.decision, x.sid, x.name, x.opts):
        return Effect.CALL_AGAIN
    child = next((p.child_run_id for p in x.decision.pauses if p.step_id == x.sid), None)
    _waiting_span(x, f"invoke {x.name}", None, **({"child_run.id": child} if child else {}))
    return Effect.NONE


def _send(x: OpInput) -> Effect:
    try:
        ids = _send_events(x.cc, x.decision, x.opts.get("events") or [])
    except InvalidRequestError as exc:
        x.decision.steps.append(StepWrite(x.sid, StepStatus.FAILED, name=x.name, kind="send", ended_at=x.cc.now,
                                          error={"name": "InvalidEvent", "message": exc.message}))
    else:
        x.decision.steps.append(StepWrite(x.sid, StepStatus.COMPLETED, name=x.name, kind="send", ended_at=x.cc.now,
                                          output={"data": {"ids": ids}}))
    return Effect.CALL_AGAIN


def _run_step(x: OpInput) -> Effect:
    try:
        spec = parse_runtime(x.opts.get("runtime"), lambda p, step=x.name: DefinitionError(p, step=step))
    except DefinitionError as exc:
        x.decision.steps.append(StepWrite(x.sid, StepStatus.FAILED, name=x.name, kind="runstep", ended_at=x.cc.now,
                                          error={"name": "InvalidRuntime", "message": exc.message}))
        return Effect.CALL_AGAIN
    x.decision.jobs.append(NewJob(x.sid, x.cc.now, JobKind.STEP, {"runtime": spec.to_config(),
                                                                  "data": x.opts.get("data")},
                                  name=x.name, step_kind="runstep"))
    return Effect.NONE


def _unsupported(x: OpInput) -> Effect:
    """Requests for something Inngest's server does on the function's behalf (UNSUPPORTED_OPS)."""
    x.decision.steps.append(StepWrite(x.sid, StepStatus.FAILED, name=x.name, kind="unsupported", ended_at=x.cc.now,
                                      error={"name": "UnsupportedStep",
                                             "message": f"step {x.name!r} is a {x.kind.value} step, which stepflow "
                                                        f"does not support: {UNSUPPORTED_OPS[x.kind]}"}))
    return Effect.CALL_AGAIN


HANDLERS: dict[Op, Callable[[OpInput], Effect]] = {
    Op.STEP_RUN: _step_ran, Op.STEP: _step_ran,
    Op.STEP_ERROR: _step_errored, Op.STEP_FAILED: _step_errored,
    Op.STEP_PLANNED: _step_planned, Op.STEP_NOT_FOUND: _step_not_found,
    Op.SLEEP: _sleep, Op.WAIT_FOR_EVENT: _wait, Op.INVOKE_FUNCTION: _invoke_function,
    Op.SEND_EVENT: _send, Op.RUN_STEP: _run_step,
    **{op: _unsupported for op in UNSUPPORTED_OPS},
}


# --- helpers -----------------------------------------------------------------------------------------------------


def attempts_text(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"


def too_large(what: str, size: int, cc: CallContext) -> dict[str, Any]:
    return {"code": "output_too_large", "name": "OutputTooLarge", "size": size, "limit": cc.max_output_bytes,
            "message": f"{what} is {size} bytes encoded; the limit is {cc.max_output_bytes} bytes "
                       f"({cc.max_output_bytes / 1048576:g} MiB). Return less data (e.g. store large results "
                       "elsewhere and return a reference)"}


# ops that report a step's outcome (as opposed to asking the engine to do something for the step)
_OUTCOMES = {Op.STEP_RUN, Op.STEP_ERROR, Op.STEP_FAILED}


def _step_name(state: RunState, sid: str | None) -> str:
    step = state.steps.get(sid or "")
    return step.name if step is not None and step.name else str(sid)


def _step_error(cc: CallContext, decision: Advance, sid: str, name: str, op: dict[str, Any],
                opts: dict[str, Any], existing: StepRecord | None, *, final: bool,
                retry_after: float | None = None) -> bool:
    """StepError: an attempt of the step failed (retried while attempts remain). StepFailed: the SDK says it was
    the last one. True when the function must be called again (the failure is memoized)."""
    now = cc.now
    raw_error = op.get("error")
    error = dict(raw_error) if isinstance(raw_error, dict) else {"message": str(raw_error or "")}
    error.setdefault("name", "Error")
    error.setdefault("message", "")
    attempt = _step_attempt(cc, sid, existing)
    retriable = not final and opts.get("retriable", True) is not False
    # when to retry: stepflow's SDK says it in the op; the JS SDK in the answer's Retry-After header
    retry_after_ms = opts.get("retry_after_ms")
    if isinstance(retry_after_ms, (int, float)) and not isinstance(retry_after_ms, bool):
        retry_after = retry_after_ms / 1000
    if retriable and attempt + 1 < cc.max_attempts:
        delay = cc.backoff(attempt, retry_after)
        at = now + int(delay * 1000)
        error["retry_in_ms"] = int(delay * 1000)
        decision.steps.append(StepWrite(sid, StepStatus.SCHEDULED, name=name, kind="run", error=error,
                                        attempts=attempt + 1, scheduled_at=at, logs=op_logs(op)))
        decision.jobs.append(NewJob(sid if cc.target else "", at, JobKind.CALL,
                                    {"target": sid} if cc.target else None, step_row=False, attempt=attempt + 1))
        return False
    if retriable:
        error["message"] += f" (gave up after {attempts_text(cc.max_attempts)})"
    decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="run", error=error,
                                    attempts=attempt + 1, ended_at=now, logs=op_logs(op)))
    return True


def op_logs(op: dict[str, Any]) -> str | None:
    """The ctx.logger lines stepflow's SDK sends with a step's op (`logs`), bounded as the SDK bounds them."""
    logs = op.get("logs")
    if not isinstance(logs, str) or not logs:
        return None
    return logs if len(logs) <= MAX_LOGS else logs[:MAX_LOGS - len(TRUNCATED)] + TRUNCATED


def _wait_for_event(state: RunState, cc: CallContext, decision: Advance, sid: str, name: str,
                    op: dict[str, Any], opts: dict[str, Any]) -> bool:
    now = cc.now
    event_name = opts.get("event") or op.get("name")
    expression = opts.get("if")
    if opts.get("match"):
        field = str(opts["match"]).removeprefix("event.").removeprefix("async.")
        match_expr = f"event.{field} == async.{field}"
        expression = f"({expression}) && {match_expr}" if expression else match_expr
    try:
        if not isinstance(event_name, str) or not event_name:
            raise ValueError("no event name to wait for")
        if expression is not None:
            Expression(expression)
        expires = now + int(parse_duration(opts.get("timeout") or "24h") * 1000)
    except (ExpressionError, ValueError) as exc:
        decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="wait", ended_at=now,
                                        error={"name": "InvalidWait", "message": str(exc)}))
        return True
    decision.steps.append(StepWrite(sid, StepStatus.SCHEDULED, name=name, kind="wait", scheduled_at=expires))
    since = cc.call_started
    if cc.fast_forward:
        expires, since = now, state.run.created_at
    decision.pauses.append(NewPause(run_id=state.run.id, step_id=sid, kind="event", event_name=event_name,
                                    expression=expression, expires_at=expires, since=since))
    decision.jobs.append(NewJob(sid, expires, JobKind.TIMEOUT, {"wait": "event"}, step_row=False))
    return False


def _step_attempt(cc: CallContext, sid: str, existing: StepRecord | None) -> int:
    """The 0-based attempt of step `sid` reported by this call.

    A call's attempt number belongs to the one step it retries: its target, or (untargeted) the step whose
    earlier attempt failed and is scheduled again — that step's row counts its attempts. Any other step
    reached in the same call (inline, after the retried one succeeded) is on its first attempt; giving it the
    call's number would spend its retries before it ever failed.
    """
    if cc.target is not None:
        return cc.attempt if cc.target == sid else 0
    if existing is not None and existing.status is StepStatus.SCHEDULED:
        return existing.attempts
    return 0


def _sleep_until(op: dict[str, Any], opts: dict[str, Any], now: int) -> int:
    """When a Sleep op ends. The SDKs say it three ways: `opts.duration` (stepflow), `name` as an ISO time
    (the Python SDK, and sleepUntil), `name` as a duration such as "3s" (the JS SDK)."""
    if opts.get("until") is not None or opts.get("duration") is not None:
        if isinstance(opts.get("until"), str):
            return _iso_ms(opts["until"])
        return now + int(parse_duration(opts["duration"]) * 1000)
    name = op.get("name")
    if isinstance(name, str) and name:
        try:
            return _iso_ms(name)
        except ValueError:
            return now + int(parse_duration(name) * 1000)
    raise ValueError("the Sleep op says neither how long (opts.duration, or a duration in 'name') nor until when "
                     "(an ISO time in 'name')")


def _iso_ms(text: str) -> int:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _invoke(state: RunState, cc: CallContext, decision: Advance, sid: str, name: str,
            opts: dict[str, Any]) -> bool:
    """Start the invoked function's run; True (call again: the step failed) when there is no such function."""
    now = cc.now
    wanted = str(opts.get("function_id", ""))
    target = cc.functions.get_active(wanted)
    if target is None and "-" in wanted:  # "<app>-<function>", the public protocol's composite id
        for version, fn in cc.functions.active():
            if wanted == f"{fn.app_id}-{fn.id}":
                target = (version, fn)
    if target is None:
        decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="invoke", ended_at=now, error={
            "name": "FunctionNotFound", "message": f"cannot invoke {wanted!r}: no such function is registered"}))
        return True
    version, fn = target
    payload = opts.get("payload") or {}
    event = EventRecord(id=new_ulid(), name=INVOKED_EVENT, data=payload.get("data") or {}, ts=now, received_at=now,
                        user=payload.get("user"))
    child = new_run(fn, version, event.to_dict(), now)
    decision.events.append(NewEvent(event=event, runs=[child]))
    decision.steps.append(StepWrite(sid, StepStatus.SCHEDULED, name=name, kind="invoke", scheduled_at=now))
    decision.pauses.append(NewPause(run_id=state.run.id, step_id=sid, kind="invoke", child_run_id=child.run_id))
    if opts.get("timeout"):
        expires = now + int(parse_duration(opts["timeout"]) * 1000)
        decision.jobs.append(NewJob(sid, expires, JobKind.TIMEOUT, {"wait": "invoke", "child": child.run_id},
                                    step_row=False))
    return False


def _send_events(cc: CallContext, decision: Advance, raw_events: list[Any]) -> list[str]:
    records = [validate_event(item, index=i if len(raw_events) > 1 else None, received_at=cc.now)
               for i, item in enumerate(raw_events)]
    for record in records:
        payload = record.to_dict()
        runs = [new_run(fn, version, payload, cc.now) for version, fn in cc.functions.matching(record.name, payload)]
        decision.events.append(NewEvent(event=record, runs=runs))
    return [r.id for r in records]
