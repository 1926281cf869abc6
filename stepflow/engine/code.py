"""Driving code functions (SDK protocol, docs/sdk.md#the-protocol) from the engine side.

A code run is a sequence of *calls*: the engine sends the Input with every memoized step, the SDK answers
200 (done), 206 (ops) or an error. This module turns each answer into one `Advance`, applied in the same
transaction that consumes the call's job — so every reported step is stored exactly once, and what comes
next is queued atomically with it.

The run is called again only when nothing of it is pending: parallel steps (`asyncio.gather`) all settle
before the function replays, so no step is ever started twice by overlapping replays.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from stepflow import codec
from stepflow.definitions import FunctionDef
from stepflow.definitions.loader import _parse_runtime
from stepflow.durations import parse_duration
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.runs import new_run
from stepflow.errors import DefinitionError, ExpressionError, InvalidRequestError
from stepflow.events import validate_event
from stepflow.expressions import Expression
from stepflow.ids import new_ulid
from stepflow.protocol import wire
from stepflow.protocol.wire import UNSUPPORTED_OPS, Op
from stepflow.protocol.contract import StepResponse
from stepflow.store.records import (
    Advance,
    EventRecord,
    JobKind,
    NewEvent,
    NewJob,
    NewPause,
    RunState,
    RunStatus,
    StepRecord,
    StepStatus,
    StepWrite,
)

INVOKED_EVENT = "inngest/function.invoked"
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
                               target=target, version=version, extra_ctx=extra)


def build_remote_input(fn: FunctionDef, state: RunState, step_id: str, attempt: int, max_attempts: int,
                       data: Any) -> bytes:
    """The step contract's Input for a RunStep: completed steps by their names, as {status, body}."""
    steps = {(s.name or sid): {"status": 200, "body": (s.output or {}).get("data")}
             for sid, s in state.steps.items() if s.kind is not None and s.status is StepStatus.COMPLETED}
    step = state.steps.get(step_id)
    document: dict[str, Any] = {
        "event": state.event or {}, "events": [state.event or {}], "steps": steps,
        "ctx": {"run_id": state.run.id, "function_id": fn.id, "app_id": fn.app_id,
                "step_id": step.name if step and step.name else step_id, "attempt": attempt,
                "max_attempts": max_attempts}}
    if data is not None:
        document["data"] = data
    return codec.dumps(document)


class CallContext:
    """What the advance of one call needs besides the run's state."""

    def __init__(self, fn: FunctionDef, functions: FunctionRegistry, *, attempt: int, max_attempts: int,
                 target: str | None, call_started: int, now: int, max_output_bytes: int,
                 backoff: Any, fast_forward: bool = False) -> None:
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


def call_again_when_idle(decision: Advance) -> None:
    """The function is called again once nothing of its run is pending (the store applies the rule)."""
    decision.call_when_idle = True


class NoProgress(Exception):
    """A call's answer moved the run nowhere (an op the engine does not know, a step planned again while it is
    pending, a targeted step the SDK did not reach, a malformed op). It is an error of the attempt: recorded
    and retried like a 5xx, so a run never waits for ever on an answer that changed nothing."""

    def __init__(self, code: str, message: str, step_id: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "name": "ProtocolError", "message": message}
        self.step_id = step_id
        self.name = name


def advance_after_call(state: RunState, cc: CallContext, response: StepResponse | None,
                       error: dict[str, Any] | None, retryable: bool, retry_after: float | None) -> Advance:
    """Decide what follows one call of a code function."""
    now = cc.now
    offending: tuple[str, str | None] | None = None
    if response is not None and response.status == 206:
        try:
            return _apply_ops(state, cc, response.body, retry_after)
        except NoProgress as exc:
            response, error, retryable, retry_after = None, {**exc.error, "attempt": cc.attempt}, True, None
            if exc.step_id is not None and exc.step_id != cc.target and exc.step_id not in state.busy_steps:
                offending = (exc.step_id, exc.name)
    if response is not None and 200 <= response.status < 300:
        size = len(codec.dumps(response.body))
        if size > cc.max_output_bytes:
            return Advance(finish=RunStatus.FAILED, error=_too_large("the function's output", size, cc))
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
        error["message"] += f" (gave up after {_attempts(cc.max_attempts)})"
    return Advance(finish=RunStatus.FAILED, error=error)


def _attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"


def _too_large(what: str, size: int, cc: CallContext) -> dict[str, Any]:
    return {"code": "output_too_large", "name": "OutputTooLarge", "size": size, "limit": cc.max_output_bytes,
            "message": f"{what} is {size} bytes encoded; the limit is {cc.max_output_bytes} bytes "
                       f"({cc.max_output_bytes / 1048576:g} MiB). Return less data (e.g. store large results "
                       "elsewhere and return a reference)"}


# ops that report a step's outcome (as opposed to asking the engine to do something for the step)
_OUTCOMES = {Op.STEP_RUN, Op.STEP_ERROR, Op.STEP_FAILED}


def _apply_ops(state: RunState, cc: CallContext, ops: Any, retry_after: float | None = None) -> Advance:
    """Turn a 206 answer into a decision. Raises NoProgress when the answer changes nothing."""
    now = cc.now
    decision = Advance()
    if not isinstance(ops, list):
        raise NoProgress("protocol_error", f"a 206 answer must carry a list of ops, got {type(ops).__name__}")
    if not ops:
        raise NoProgress("no_progress", "the SDK answered 206 with no op: nothing ran and nothing was planned"
                         + (f" (the call targeted step {_step_name(state, cc.target)!r})" if cc.target else ""))
    wakes_function = False
    progressed = False
    stale: list[str] = []
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise NoProgress("protocol_error", f"malformed op {str(op)[:200]}: an op is an object with 'op'")
        kind_raw = op["op"]
        if kind_raw == Op.RUN_COMPLETE:
            size = len(codec.dumps(op.get("data")))
            if size > cc.max_output_bytes:
                decision.finish, decision.error = RunStatus.FAILED, _too_large("the function's output", size, cc)
            else:
                decision.finish, decision.output = RunStatus.COMPLETED, op.get("data")
            progressed = True
            continue
        if kind_raw == Op.DISCOVERY_REQUEST:
            wakes_function = progressed = True  # the SDK asks to be called again to go on
            continue
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
            continue
        if sid in state.busy_steps:
            # already queued, sleeping or waiting: a second job would run it twice
            stale.append(f"{kind_raw} for step {name!r}, which is already "
                         f"{'planned' if existing is None else existing.status.value}")
            continue
        if cc.target is not None and sid == cc.target and kind is Op.STEP_PLANNED:
            stale.append(f"StepPlanned for step {name!r}, the step this call targeted: the SDK did not run it "
                         "(it reads the target from the call's ?stepId= query)")
            continue
        if cc.target is not None and kind in _OUTCOMES and sid != cc.target:
            stale.append(f"{kind_raw} for step {name!r} in a call that targeted step "
                         f"{_step_name(state, cc.target)!r}")
            continue
        progressed = True
        if kind in (Op.STEP_RUN, Op.STEP):
            data = op.get("data")
            size = len(codec.dumps(data))
            attempt = _step_attempt(cc, sid, existing)
            if size > cc.max_output_bytes:
                decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="run", ended_at=now,
                                                error=_too_large(f"step {name!r}'s output", size, cc),
                                                attempts=attempt + 1))
                # Whatever the function did after this step (later inline steps, its return) used a value that
                # is not stored: drop it. The next call replays and meets the failed step as a StepError.
                wakes_function = True
                break
            decision.steps.append(StepWrite(sid, StepStatus.COMPLETED, name=name, kind="run",
                                            output={"data": data}, ended_at=now, attempts=attempt + 1))
            wakes_function = True
        elif kind in (Op.STEP_ERROR, Op.STEP_FAILED):
            wakes_function |= _step_error(cc, decision, sid, name, op, opts, existing, final=kind is Op.STEP_FAILED,
                                          retry_after=retry_after)
        elif kind is Op.STEP_PLANNED:
            decision.jobs.append(NewJob(sid, now, JobKind.CALL, {"target": sid}, name=name, step_kind="run"))
        elif kind is Op.STEP_NOT_FOUND:
            raise NoProgress("step_not_found", f"the SDK did not reach step {name!r} in a call that targeted it",
                             sid, name)
        elif kind is Op.SLEEP:
            try:
                until = now if cc.fast_forward else _sleep_until(op, opts, now)
            except ValueError as exc:
                raise NoProgress("protocol_error", f"sleep {name!r}: {exc}", sid, name) from exc
            decision.jobs.append(NewJob(sid, until, JobKind.SLEEP, name=name, step_kind="sleep"))
        elif kind is Op.WAIT_FOR_EVENT:
            wakes_function |= _wait_for_event(state, cc, decision, sid, name, op, opts)
        elif kind is Op.INVOKE_FUNCTION:
            _invoke(state, cc, decision, sid, name, opts)
        elif kind is Op.SEND_EVENT:
            try:
                ids = _send_events(cc, decision, opts.get("events") or [])
            except InvalidRequestError as exc:
                decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="send", ended_at=now,
                                                error={"name": "InvalidEvent", "message": exc.message}))
            else:
                decision.steps.append(StepWrite(sid, StepStatus.COMPLETED, name=name, kind="send", ended_at=now,
                                                output={"data": {"ids": ids}}))
            wakes_function = True
        elif kind is Op.RUN_STEP:
            try:
                spec = _parse_runtime(opts.get("runtime"), lambda p, step=name: DefinitionError(p, step=step))
            except DefinitionError as exc:
                decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="runstep", ended_at=now,
                                                error={"name": "InvalidRuntime", "message": exc.message}))
                wakes_function = True
                continue
            decision.jobs.append(NewJob(sid, now, JobKind.STEP, {"runtime": spec.to_config(),
                                                                 "data": opts.get("data")},
                                        name=name, step_kind="runstep"))
        else:  # requests for something the server would do on the function's behalf (UNSUPPORTED_OPS)
            decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="unsupported", ended_at=now,
                                            error={"name": "UnsupportedStep",
                                                   "message": f"step {name!r} is a {kind_raw} step, which stepflow "
                                                              f"does not support: {UNSUPPORTED_OPS[kind]}"}))
            wakes_function = True
    if not progressed:
        raise NoProgress("no_progress", "the answer changed nothing: " + "; ".join(stale),
                         cc.target, _step_name(state, cc.target) if cc.target else None)
    if decision.finish is not None:
        decision.jobs, decision.pauses = [], []
        return decision
    if wakes_function:
        call_again_when_idle(decision)
    return decision


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
                                        attempts=attempt + 1, scheduled_at=at))
        decision.jobs.append(NewJob(sid if cc.target else "", at, JobKind.CALL,
                                    {"target": sid} if cc.target else None, step_row=False, attempt=attempt + 1))
        return False
    if retriable:
        error["message"] += f" (gave up after {_attempts(cc.max_attempts)})"
    decision.steps.append(StepWrite(sid, StepStatus.FAILED, name=name, kind="run", error=error,
                                    attempts=attempt + 1, ended_at=now))
    return True


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
            opts: dict[str, Any]) -> None:
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
        call_again_when_idle(decision)
        return
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


def _send_events(cc: CallContext, decision: Advance, raw_events: list[Any]) -> list[str]:
    records = [validate_event(item, index=i if len(raw_events) > 1 else None, received_at=cc.now)
               for i, item in enumerate(raw_events)]
    for record in records:
        payload = record.to_dict()
        runs = [new_run(fn, version, payload, cc.now) for version, fn in cc.functions.matching(record.name, payload)]
        decision.events.append(NewEvent(event=record, runs=runs))
    return [r.id for r in records]


def failure_event(state: RunState, error: dict[str, Any] | None, functions: FunctionRegistry, now: int) -> NewEvent:
    """`inngest/function.failed`, emitted in the transaction that fails a run; starts on_failure handlers."""
    event = EventRecord(id=new_ulid(), name=FAILURE_EVENT, ts=now, received_at=now, data={
        "function_id": state.run.function_id, "run_id": state.run.id, "error": error or {},
        "event": state.event or {}})
    payload = event.to_dict()
    runs = [new_run(fn, version, payload, now) for version, fn in functions.matching(FAILURE_EVENT, payload)]
    return NewEvent(event=event, runs=runs)

