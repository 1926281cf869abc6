"""Errors user code raises (NonRetriableError, RetryAfterError) or catches (StepError)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stepflow.durations import parse_duration
from stepflow.errors import StepflowError


class NonRetriableError(StepflowError):
    """Raise it (in a step or in the function) to fail now: no retry will fix this."""

    code = "non_retriable"


class RetryAfterError(StepflowError):
    """Raise it to be retried no earlier than `delay` from now (a duration or a datetime)."""

    code = "retry_after"

    def __init__(self, message: str, delay: str | float | timedelta | datetime) -> None:
        super().__init__(message)
        if isinstance(delay, datetime):
            when = delay if delay.tzinfo else delay.replace(tzinfo=UTC)
            self.retry_after = max(0.0, (when - datetime.now(UTC)).total_seconds())
        else:
            self.retry_after = parse_duration(delay)


class StepError(StepflowError):
    """A step failed for good (its last attempt failed, or it raised NonRetriableError).

    Raised inside the function where the step is awaited; catch it to recover. `name`, `message` and `stack`
    describe the original error.
    """

    code = "step_failed"

    def __init__(self, step_id: str, error: dict[str, Any] | Any) -> None:
        if not isinstance(error, dict):
            error = {"message": str(error)}
        self.step_id = step_id
        self.error_name = str(error.get("name") or error.get("code") or "Error")
        self.error_message = str(error.get("message") or "")
        self.stack = error.get("stack")
        self.details = error
        super().__init__(f"step {step_id!r} failed: {self.error_name}: {self.error_message}")


class NonDeterminismError(StepflowError):
    """The function's code changed during a run: a replay met a different step where a memoized one was."""

    code = "nondeterminism"


class InvalidStepUsage(StepflowError):
    """The function used the step tools in a way that cannot be made durable (e.g. nested steps)."""

    code = "invalid_step_usage"
