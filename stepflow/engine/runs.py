"""Creating runs: the options every function kind shares (idempotency, cancel_on, timeouts)."""

from __future__ import annotations

from typing import Any

from stepflow.definitions import FunctionDef
from stepflow.errors import ExpressionError
from stepflow.ids import new_ulid
from stepflow.store.records import JobKind, NewJob, NewPause, NewRun


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
    return run
