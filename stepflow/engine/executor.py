"""Executing one claimed job and recording what it produced.

The rules of docs/step-contract.md live here, once, for every runtime: 2xx → store {status, body}; 4xx (or
X-Inngest-No-Retry) → fail now; 5xx and no answer → retry with backoff until the attempts are spent; output
over the limit → `output_too_large`, not retried. Jobs of code functions (calls, sleeps, waits, steps on other
runtimes) are turned into decisions by `engine.code`; workflow steps by `engine.planner`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepflow import codec
from stepflow.definitions import FunctionDef
from stepflow.durations import parse_duration
from stepflow.engine import activity, code
from stepflow.engine.config import EngineConfig
from stepflow.engine.planner import advance_workflow
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.retry import backoff_delay
from stepflow.ids import now_ms
from stepflow.observability.metrics import Metrics
from stepflow.observability.tracing import new_span_id, traceparent
from stepflow.protocol import wire
from stepflow.protocol.answers import StepAnswer, StepAttemptError, interpret
from stepflow.protocol.contract import StepContext, StepResponse, build_input
from stepflow.runtimes.base import Invocation, RuntimeRegistry
from stepflow.store.base import Store
from stepflow.store.records import (
    Advance,
    Job,
    JobKind,
    RunRecord,
    RunState,
    RunStatus,
    SpanRecord,
    StepStatus,
    StepUpdate,
)

log = logging.getLogger("stepflow.engine")


@dataclass(frozen=True, slots=True)
class Succeeded:
    response: StepResponse          # a 2xx: stored


@dataclass(frozen=True, slots=True)
class RetryLater:
    error: dict[str, Any]           # recorded on the step meanwhile
    delay: float                    # seconds: the backoff, or the step's Retry-After


@dataclass(frozen=True, slots=True)
class FailedForGood:
    error: dict[str, Any]           # a 4xx, no-retry, or the last attempt


Verdict = Succeeded | RetryLater | FailedForGood


# a run's trace is bounded: spans for its first MAX_TRACED_STEPS steps, and the first MAX_TRACED_ATTEMPTS
# attempts of each (a retry storm does not grow it)
MAX_TRACED_STEPS = 1000
MAX_TRACED_ATTEMPTS = 10


@dataclass(slots=True)
class Attempt:
    """One delivery of an Input through a runtime: an answer, or the reason there was none."""

    answer: StepAnswer | None
    failure: StepAttemptError | None
    started: int
    ended: int
    outcome: str = ""   # the answer's status class (2xx, 206, 4xx, 5xx) or why there was none (timeout, …)

    def span(self, job: Job, invocation: Invocation, name: str, runtime: str) -> SpanRecord | None:
        """This attempt as a span of its run's trace (None when the run has no trace)."""
        if not invocation.ctx.traceparent:
            return None
        attributes: dict[str, Any] = {"step.id": invocation.ctx.step_id or None, "runtime": runtime,
                                      "attempt": job.attempt + 1, "outcome": self.outcome}
        if self.answer is not None:
            attributes["status"] = self.answer.response.status
        if self.failure is not None:
            attributes["error"] = self.failure.message[:500]
        ok = self.outcome in ("2xx", "206")
        return SpanRecord(run_id=job.run_id, span_id=invocation.ctx.traceparent.split("-")[2], parent_id=None,
                          name=name, start=self.started, end=self.ended, status="ok" if ok else "error",
                          attributes={k: v for k, v in attributes.items() if v is not None})


class Executor:
    def __init__(self, store: Store, functions: FunctionRegistry, runtimes: RuntimeRegistry,
                 config: EngineConfig, metrics: Metrics | None = None) -> None:
        self.store = store
        self.functions = functions
        self.runtimes = runtimes
        self.config = config
        self.metrics = metrics or Metrics()
        # the executor request version each function's SDK chose (X-Inngest-Req-Version of its answers)
        self._request_versions: dict[str, int] = {}

    def _traceparent(self, state: RunState, attempt: int = 0) -> str | None:
        """A new span of the run's trace for one attempt (None when tracing is off, or for a run without a trace:
        one stored before traces)."""
        if not self.config.tracing or not state.run.trace_id or len(state.steps) >= MAX_TRACED_STEPS \
                or attempt >= MAX_TRACED_ATTEMPTS:
            return None  # (a run's trace is bounded: its first 1,000 steps)
        return traceparent(state.run.trace_id, new_span_id())

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        return backoff_delay(attempt, self.config.backoff_base, self.config.backoff_max, retry_after)

    async def execute(self, job: Job) -> RunRecord | None:
        """Run the job and record the outcome. Returns the run if it ended."""
        fn = await self.functions.get(job.function_id, job.function_version)
        handler = {JobKind.CALL: self._code_call, JobKind.SLEEP: self._sleep_ended,
                   JobKind.TIMEOUT: self._wait_timed_out, JobKind.RUN_TIMEOUT: self._run_timed_out,
                   JobKind.STEP: self._code_remote_step if fn.is_code else self._workflow_step}[job.kind]
        if job.kind in (JobKind.CALL, JobKind.STEP) and job.attempt >= fn.attempts_for(
                "" if fn.is_code else job.step_id):
            handler = self._exhausted  # every attempt was lost to an engine crash
        return await handler(fn, job)

    # --- shared -------------------------------------------------------------------------------------------

    async def _attempt(self, runtime_type: str, invocation: Invocation) -> Attempt:
        started = now_ms()
        try:
            delivery = await self.runtimes.get(runtime_type).invoke(invocation)
            answer: StepAnswer | None = interpret(delivery, sdk_call=invocation.sdk_call,
                                                  max_output_bytes=invocation.max_output_bytes)
            failure: StepAttemptError | None = None
        except StepAttemptError as exc:
            answer, failure = None, exc
        except Exception as exc:  # a bug in a driver must not kill the worker; record it on the step
            log.exception("runtime %s crashed on run %s", runtime_type, invocation.ctx.run_id)
            answer, failure = None, StepAttemptError("runtime_error", f"{type(exc).__name__}: {exc}")
        ended = now_ms()
        # outcome: the answer's status class (2xx, 206 for an SDK's ops, 4xx, 5xx), or why there was none
        outcome = (("206" if answer.response.status == 206 else f"{answer.response.status // 100}xx")
                   if answer is not None else failure.code if failure is not None else "error")
        self.metrics.attempt(runtime_type, outcome, (ended - started) / 1000)
        return Attempt(answer=answer, failure=failure, started=started, ended=ended, outcome=outcome)

    async def _settle(self, job: Job, update: StepUpdate | None, advance: Any, now: int) -> RunRecord | None:
        functions = self.functions

        def decide(state: RunState) -> Advance:
            decision: Advance = advance(state) if advance is not None else Advance()
            if decision.finish is RunStatus.FAILED:
                # on_failure handlers start from this event, stored in the same transaction as the failure
                decision.events.append(code.failure_event(state, decision.error, functions, now))
            return decision

        run = await self.store.settle_job(job, update, decide, now)
        if run is not None and run.status.is_terminal:
            return run
        return None

    def _timeout_for(self, options: dict[str, Any], step_timeout: float | None = None) -> float:
        if step_timeout:
            return step_timeout
        if options.get("timeout") is not None:
            return parse_duration(options["timeout"])
        return self.config.step_timeout

    def _classify(self, attempt: Attempt, job: Job, max_attempts: int) -> Verdict:
        """What an attempt's outcome means under the contract: stored, retried later, or failed for good."""
        answer, failure = attempt.answer, attempt.failure
        duration = attempt.ended - attempt.started
        if answer is not None:
            status = answer.response.status
            if 200 <= status < 300:
                return Succeeded(answer.response)
            error: dict[str, Any] = {"code": "step_error", "status": status, "attempt": job.attempt,
                                     "duration_ms": duration, "message": f"the step answered status {status}",
                                     "body": answer.response.body, **answer.details}
            retryable = status >= 500 and not answer.no_retry
            if 400 <= status < 500:
                error["message"] += " (4xx: not retried)"
            elif answer.no_retry:
                error["message"] += " (X-Inngest-No-Retry: not retried)"
            elif status < 500:
                error["message"] += " (not a 2xx, 4xx or 5xx status)"
                retryable = True
            retry_after = answer.retry_after
        else:
            assert failure is not None
            error = {"code": failure.code, "message": failure.message, "attempt": job.attempt,
                     "duration_ms": duration, **failure.details}
            retryable = failure.retryable
            retry_after = None
        if retryable and job.attempt + 1 < max_attempts:
            delay = self.backoff(job.attempt, retry_after)
            error["retry_in_ms"] = int(delay * 1000)
            return RetryLater(error, delay)
        if retryable:
            error["message"] += f"; gave up after {max_attempts} attempt{'s' if max_attempts != 1 else ''}"
        return FailedForGood(error)

    async def _step_attempt(self, job: Job, runtime_type: str, invocation: Invocation, max_attempts: int,
                            stored: Callable[[StepResponse], Any],
                            failed: Callable[[dict[str, Any]], dict[str, Any]]) -> StepUpdate | None:
        """One attempt of a step under the contract: the final StepUpdate, or None when it was put back for a
        retry (recorded on the step, due after the backoff)."""
        attempt = await self._attempt(runtime_type, invocation)
        verdict = self._classify(attempt, job, max_attempts)
        logs = attempt.answer.logs if attempt.answer else attempt.failure.logs if attempt.failure else None
        now = attempt.ended
        span = attempt.span(job, invocation, f"step {job.step_id}", runtime_type)
        if span is not None and isinstance(verdict, RetryLater):
            span.attributes["retry.in_ms"] = int(verdict.delay * 1000)
        if isinstance(verdict, RetryLater):
            self.metrics.retries.labels(job.function_id).inc()
            if activity.enabled():
                activity.step_retried(job.run_id, job.function_id, job.step_id, job.attempt, verdict.delay,
                                      verdict.error)
            update = StepUpdate(status=StepStatus.SCHEDULED, ended_at=now, error=verdict.error, logs=logs, span=span)
            await self.store.retry_job(job, update, now + int(verdict.delay * 1000))
            return None
        if activity.enabled():
            activity.step_ended(job.run_id, job.function_id, job.step_id, job.attempt,
                                "completed" if isinstance(verdict, Succeeded) else "failed",
                                attempt.ended - attempt.started,
                                None if isinstance(verdict, Succeeded) else verdict.error,
                                trace_id=(invocation.ctx.traceparent or "--").split("-")[1] or None)
        if isinstance(verdict, Succeeded):
            return StepUpdate(status=StepStatus.COMPLETED, ended_at=now, output=stored(verdict.response), logs=logs,
                              span=span)
        return StepUpdate(status=StepStatus.FAILED, ended_at=now, error=failed(verdict.error), logs=logs, span=span)

    # --- workflow steps -----------------------------------------------------------------------------------

    async def _workflow_step(self, fn: FunctionDef, job: Job) -> RunRecord | None:
        step = fn.steps.get(job.step_id)
        if step is None:
            now = now_ms()
            missing = StepUpdate(status=StepStatus.FAILED, ended_at=now, error={
                "code": "unknown_step", "attempt": job.attempt,
                "message": f"function {fn.id!r} v{job.function_version} has no step {job.step_id!r}"})
            return await self._settle(job, missing, lambda s: advance_workflow(fn, s, missing, job.step_id, now),
                                      now)
        state = await self.store.load_run_state(job.run_id)
        if state is None:
            return None
        max_attempts = fn.attempts_for(job.step_id)
        ctx = StepContext(run_id=job.run_id, function_id=fn.id, app_id=fn.app_id, step_id=job.step_id,
                          attempt=job.attempt, max_attempts=max_attempts,
                          traceparent=self._traceparent(state, job.attempt))
        invocation = Invocation(input=build_input(state.event or {}, state.completed_outputs(), ctx, state.events),
                                options=step.runtime.options, ctx=ctx,
                                timeout=self._timeout_for(step.runtime.options, step.timeout),
                                max_output_bytes=self.config.max_output_bytes, signing_key=self.config.signing_key)
        update = await self._step_attempt(job, step.runtime.type, invocation, max_attempts,
                                          lambda response: response.to_stored(), lambda error: error)
        if update is None:
            return None  # retried later
        return await self._settle(job, update, lambda s: advance_workflow(fn, s, update, job.step_id,
                                                                          update.ended_at), update.ended_at)

    # --- code functions -----------------------------------------------------------------------------------

    async def _code_call(self, fn: FunctionDef, job: Job) -> RunRecord | None:
        assert fn.runtime is not None
        state = await self.store.load_run_state(job.run_id)
        if state is None:
            return None
        target = (job.payload or {}).get("target")
        max_attempts = fn.attempts_for("")
        version = self._request_versions.get(fn.id, wire.SDK_CHOOSES_VERSION)
        document = code.build_call_input(fn, state, job.attempt, max_attempts, target,
                                         max_output_bytes=self.config.max_output_bytes, version=version)
        ctx = StepContext(run_id=job.run_id, function_id=fn.id, app_id=fn.app_id, step_id=target or "",
                          attempt=job.attempt, max_attempts=max_attempts,
                          traceparent=self._traceparent(state, job.attempt))
        if ctx.traceparent:
            document["ctx"]["traceparent"] = ctx.traceparent
        options = dict(fn.runtime.options)
        if fn.runtime.type == "http":
            # the official SDKs read the function and the targeted step from the query only
            options["url"] = wire.call_url(options["url"], fn.id, target)
            options["headers"] = {**wire.call_headers(version), **(options.get("headers") or {})}
        invocation = Invocation(input=codec.dumps(document), options=options, ctx=ctx,
                                timeout=self._timeout_for(options), max_output_bytes=self.config.max_output_bytes,
                                signing_key=self.config.signing_key, sdk_call=True, document=document)
        attempt = await self._attempt(fn.runtime.type, invocation)
        now = attempt.ended
        cc = code.CallContext(fn, self.functions, attempt=job.attempt, max_attempts=max_attempts, target=target,
                              call_started=attempt.started, now=now, max_output_bytes=self.config.max_output_bytes,
                              backoff=self.backoff, fast_forward=self.config.fast_forward,
                              tracing=self.config.tracing)
        if attempt.answer is not None:
            answer = attempt.answer
            answered = wire.answered_version(answer.headers)
            if answered is not None:
                self._request_versions[fn.id] = answered  # echoed from now on, as Inngest does
            response, error = answer.response, None
            retryable, retry_after = not answer.no_retry, answer.retry_after
        else:
            assert attempt.failure is not None
            response = None
            error = {"code": attempt.failure.code, "message": attempt.failure.message, "attempt": job.attempt,
                     **attempt.failure.details}
            retryable, retry_after = attempt.failure.retryable, None
        decided: list[Advance] = []
        span = attempt.span(job, invocation, f"call {target}" if target else "call", fn.runtime.type)

        def decide(state: RunState) -> Advance:
            decided.append(code.advance_after_call(state, cc, response, error, retryable, retry_after))
            if span is not None:
                decided[-1].spans.append(span)
            return decided[-1]

        ended = await self._settle(job, None, decide, now)
        for write in decided[-1].steps if decided else ():  # a step (or the call) put back for another attempt
            if write.status in (StepStatus.COMPLETED, StepStatus.FAILED) and write.kind == "run" \
                    and activity.enabled():  # a step.run the SDK executed inline in this call
                activity.step_ended(job.run_id, job.function_id, write.name or write.step_id,
                                    max(0, (write.attempts or 1) - 1), write.status.value, None, write.error)
            if write.status is StepStatus.SCHEDULED and write.error is not None and write.attempts:
                self.metrics.retries.labels(job.function_id).inc()
                if activity.enabled():
                    delay = max(0.0, ((write.scheduled_at or now) - now) / 1000)
                    activity.step_retried(job.run_id, job.function_id, write.name or write.step_id,
                                          write.attempts - 1, delay, write.error)
        return ended

    async def _code_remote_step(self, fn: FunctionDef, job: Job) -> RunRecord | None:
        """A RunStep: a step of a code function executed on another runtime, with the step contract."""
        payload = job.payload or {}
        runtime = dict(payload.get("runtime") or {})
        runtime_type = str(runtime.pop("type", ""))
        state = await self.store.load_run_state(job.run_id)
        if state is None:
            return None
        max_attempts = fn.attempts_for("")
        ctx = StepContext(run_id=job.run_id, function_id=fn.id, app_id=fn.app_id, step_id=job.step_id,
                          attempt=job.attempt, max_attempts=max_attempts,
                          traceparent=self._traceparent(state, job.attempt))
        invocation = Invocation(
            input=code.build_remote_input(fn, state, job.step_id, job.attempt, max_attempts, payload.get("data")),
            options=runtime, ctx=ctx, timeout=self._timeout_for(runtime),
            max_output_bytes=self.config.max_output_bytes, signing_key=self.config.signing_key)
        # code steps store {"data": body}; a failure is memoized as an error the function sees as StepError
        update = await self._step_attempt(job, runtime_type, invocation, max_attempts,
                                          lambda response: {"data": response.body},
                                          lambda error: {"name": "StepError", **error})
        if update is None:
            return None
        return await self._settle(job, update, lambda s: Advance(call_when_idle=True), update.ended_at)

    async def _exhausted(self, fn: FunctionDef, job: Job) -> RunRecord | None:
        """Every attempt was lost to an engine crash (the attempt counter moves on at recovery): give up."""
        now = now_ms()
        error = {"code": "attempts_exhausted", "attempt": job.attempt,
                 "message": f"all {job.attempt} attempts were interrupted (the engine stopped or lost its lease "
                            "during each); not trying again"}
        if job.kind is JobKind.CALL:
            return await self._settle(job, None, lambda s: Advance(finish=RunStatus.FAILED, error=error), now)
        update = StepUpdate(status=StepStatus.FAILED, ended_at=now, error=error)
        if fn.is_code:
            return await self._settle(job, update, lambda s: Advance(call_when_idle=True), now)
        return await self._settle(job, update, lambda s: advance_workflow(fn, s, update, job.step_id, now), now)

    async def _sleep_ended(self, fn: FunctionDef, job: Job) -> RunRecord | None:
        now = now_ms()
        update = StepUpdate(status=StepStatus.COMPLETED, ended_at=now, output={"data": None})
        return await self._settle(job, update, lambda s: Advance(call_when_idle=True), now)

    async def _wait_timed_out(self, fn: FunctionDef, job: Job) -> RunRecord | None:
        now = now_ms()
        payload = job.payload or {}
        if payload.get("wait") == "invoke":
            update = StepUpdate(status=StepStatus.FAILED, ended_at=now, error={
                "name": "InvokeTimeout", "code": "timeout", "child_run_id": payload.get("child"),
                "message": "the invoked function did not finish within the step's timeout"})
        else:
            update = StepUpdate(status=StepStatus.COMPLETED, ended_at=now, output={"data": None})

        def advance(state: RunState) -> Advance:
            decision = Advance(call_when_idle=True)
            decision.remove_pauses.append(job.step_id)
            return decision

        return await self._settle(job, update, advance, now)

    async def _run_timed_out(self, fn: FunctionDef, job: Job) -> RunRecord | None:
        """The finish timeout ran out. (The start timeout is the store's: it cancels a run still queued at its
        deadline when claiming, so no job of it ever starts late.)"""
        now = now_ms()

        def advance(state: RunState) -> Advance:
            if state.run.status.is_terminal:
                return Advance()
            return Advance(finish=RunStatus.CANCELLED, error={
                "code": "finish_timeout",
                "message": f"cancelled: the run did not finish within its finish timeout ({fn.finish_timeout:g}s)"})

        return await self._settle(job, None, advance, now)


