"""Creating runs: the options every function kind shares (idempotency, cancel_on, timeouts)."""

from __future__ import annotations

from typing import Any

from stepflow.definitions import FunctionDef
from stepflow.definitions.flow_control import key_value
from stepflow.errors import ExpressionError
from stepflow.ids import new_ulid
from stepflow.store.records import JobKind, NewJob, NewPause, NewRun, RunFlow


def new_run(fn: FunctionDef, version: int, event: dict[str, Any], now: int) -> NewRun:
    run_id = new_ulid()
    if fn.is_code:
        jobs = [NewJob("", now, JobKind.CALL, step_row=False)]
    else:
        jobs = [NewJob(step_id=sid, available_at=now) for sid in fn.roots]
    run = NewRun(run_id=run_id, function_id=fn.id, function_version=version, app_id=fn.app_id, jobs=jobs)
    if fn.idempotency is not None:
        try:
            key = fn.idempotency.evaluate({"event": event})
        except ExpressionError:
            key = None  # the key cannot be computed for this event: no deduplication, rather than no run
        if key is not None:
            run.idempotency_key = key if isinstance(key, str) else repr(key)
    run.pauses = [NewPause(run_id=run_id, step_id="", kind="cancel", event_name=c.event, expression=c.expression,
                           expires_at=now + int(c.timeout * 1000) if c.timeout is not None else None)
                  for c in fn.cancel_on]
    if fn.start_timeout is not None:
        run.start_timeout_ms = int(fn.start_timeout * 1000)
    if fn.finish_timeout is not None:
        run.finish_timeout_ms = int(fn.finish_timeout * 1000)
    if fn.flow:
        run.flow = run_flow(fn, event)
    return run


def run_flow(fn: FunctionDef, event: dict[str, Any]) -> RunFlow:
    """What the function's flow control asks of a run of this event: its keys evaluated, its limits in ms."""
    flow = fn.flow
    out = RunFlow(slots=[(c.slot(fn.id, fn.app_id, event), c.limit) for c in flow.concurrency])
    if flow.priority is not None:
        out.priority_ms = flow.priority.seconds(event) * 1000
    if flow.throttle is not None:
        t = flow.throttle
        # GCRA: one start every period/limit; `limit + burst` may start at once after a quiet period
        interval = t.period * 1000 / t.limit
        out.throttle = (f"t:{fn.id}:{key_value(t.key, event)}", round(interval),
                        round(interval * (t.limit + t.burst - 1)))
    if flow.rate_limit is not None:
        r = flow.rate_limit
        interval = r.period * 1000 / r.limit
        out.rate_limit = (f"r:{fn.id}:{key_value(r.key, event)}", round(interval), round(interval * (r.limit - 1)))
    if flow.singleton is not None:
        out.singleton = (key_value(flow.singleton.key, event), flow.singleton.mode)
    if flow.batch_events is not None:
        b = flow.batch_events
        try:
            batched = b.condition is None or b.condition.is_true({"event": event})
        except ExpressionError:
            batched = False
        if batched:  # an event the `if` leaves out runs on its own, as a batch of one
            out.batch = (key_value(b.key, event), b.max_size, round(b.timeout * 1000))
    if flow.debounce is not None:
        d = flow.debounce
        out.debounce = (key_value(d.key, event), round(d.period * 1000),
                        round(d.timeout * 1000) if d.timeout is not None else None)
    return out
