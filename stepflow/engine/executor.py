"""Executing one claimed job: build the Input, call the runtime, and turn the answer into a stored decision.

The rules of DESIGN.md §2 live here, once, for every runtime:
2xx → store {status, body}; 4xx (or X-Inngest-No-Retry) → fail now; 5xx and no answer → retry with backoff
until the attempts are spent; output over the limit → `output_too_large`, not retried.
"""

from __future__ import annotations

import logging
from typing import Any

from stepflow.contract import StepContext, build_input
from stepflow.definitions import FunctionDef
from stepflow.engine.config import EngineConfig
from stepflow.engine.planner import advance_workflow
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.retry import backoff_delay
from stepflow.ids import now_ms
from stepflow.runtimes.base import Invocation, RuntimeRegistry, StepAnswer, StepAttemptError
from stepflow.store.base import Store
from stepflow.store.records import Job, RunRecord, StepStatus, StepUpdate

log = logging.getLogger("stepflow.engine")


class Executor:
    def __init__(self, store: Store, functions: FunctionRegistry, runtimes: RuntimeRegistry,
                 config: EngineConfig) -> None:
        self.store = store
        self.functions = functions
        self.runtimes = runtimes
        self.config = config

    async def execute(self, job: Job) -> RunRecord | None:
        """Run one attempt of the job's step and record the outcome. Returns the run if it just ended."""
        fn = await self.functions.get(job.function_id, job.function_version)
        step = fn.steps.get(job.step_id)
        max_attempts = fn.attempts_for(job.step_id) if step else 1
        if step is None:
            update = _failed("unknown_step", f"function {fn.id!r} v{job.function_version} has no step "
                             f"{job.step_id!r}", attempt=job.attempt)
            return await self._settle(fn, job, update)

        state = await self.store.load_run_state(job.run_id)
        if state is None:
            return None
        ctx = StepContext(run_id=job.run_id, function_id=fn.id, app_id=fn.app_id, step_id=job.step_id,
                          attempt=job.attempt, max_attempts=max_attempts)
        payload = build_input(state.event or {}, state.completed_outputs(), ctx)
        timeout = step.timeout or _float(step.runtime.options.get("timeout")) or self.config.step_timeout
        invocation = Invocation(input=payload, options=step.runtime.options, ctx=ctx, timeout=timeout,
                                max_output_bytes=self.config.max_output_bytes,
                                signing_key=self.config.signing_key)
        started = now_ms()
        try:
            runtime = self.runtimes.get(step.runtime.type)
            answer: StepAnswer | None = await runtime.invoke(invocation)
            failure: StepAttemptError | None = None
        except StepAttemptError as exc:
            answer, failure = None, exc
        except Exception as exc:  # a bug in a driver must not kill the worker; record it on the step
            log.exception("runtime %s crashed on run %s step %s", step.runtime.type, job.run_id, job.step_id)
            answer, failure = None, StepAttemptError("runtime_error", f"{type(exc).__name__}: {exc}")
        ended = now_ms()
        duration = ended - started

        if answer is not None:
            status = answer.response.status
            if 200 <= status < 300:
                update = StepUpdate(status=StepStatus.COMPLETED, ended_at=ended,
                                    output=answer.response.to_stored(), logs=answer.logs)
                return await self._settle(fn, job, update)
            error: dict[str, Any] = {"code": "step_error", "status": status, "attempt": job.attempt,
                                     "duration_ms": duration,
                                     "message": f"the step answered status {status}", "body": answer.response.body}
            retryable = status >= 500 and not answer.no_retry
            if 400 <= status < 500:
                error["message"] += " (4xx: not retried)"
            elif answer.no_retry:
                error["message"] += " (X-Inngest-No-Retry: not retried)"
            elif not status >= 500:
                error["message"] += " (not a 2xx, 4xx or 5xx status)"
                retryable = True
            retry_after = answer.retry_after
            logs = answer.logs
        else:
            assert failure is not None
            error = {"code": failure.code, "message": failure.message, "attempt": job.attempt,
                     "duration_ms": duration, **failure.details}
            retryable = failure.retryable
            retry_after = None
            logs = failure.logs

        if retryable and job.attempt + 1 < max_attempts:
            delay = backoff_delay(job.attempt, self.config.backoff_base, self.config.backoff_max, retry_after)
            error["retry_in_ms"] = int(delay * 1000)
            update = StepUpdate(status=StepStatus.SCHEDULED, ended_at=ended, error=error, logs=logs)
            await self.store.retry_job(job, update, ended + int(delay * 1000))
            return None
        if retryable:
            error["message"] += f"; gave up after {max_attempts} attempt{'s' if max_attempts != 1 else ''}"
        return await self._settle(fn, job, StepUpdate(status=StepStatus.FAILED, ended_at=ended, error=error,
                                                      logs=logs))

    async def _settle(self, fn: FunctionDef, job: Job, update: StepUpdate) -> RunRecord | None:
        def advance(state: Any) -> Any:
            return advance_workflow(fn, state, update, job.step_id, update.ended_at)

        run = await self.store.settle_job(job, update, advance)
        if run is not None and run.status.is_terminal:
            return run
        return None


def _failed(code: str, message: str, *, attempt: int) -> StepUpdate:
    return StepUpdate(status=StepStatus.FAILED, ended_at=now_ms(),
                      error={"code": code, "message": message, "attempt": attempt})


def _float(value: Any) -> float | None:
    if value is None:
        return None
    from stepflow.durations import parse_duration

    return parse_duration(value)
