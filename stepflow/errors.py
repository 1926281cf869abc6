"""The one error tree of stepflow: every error class of the package is defined here.

Every error stepflow raises on purpose derives from `StepflowError`. The only exceptions are control-flow
signals that `except Exception` must not swallow: they derive from `BaseException` directly and their names end
in `Interrupt` or `Signal`. `tests/test_error_tree.py` checks both rules, and that no public function raises a
builtin error.

Every error carries an HTTP status and a stable machine-readable `code`, so the API layer can turn any of them
into `{"error": {"code", "message"}}` without knowing where they came from, and the retry policy as the
attribute `retryable` (one spelling; the SDK protocol's wire field `opts.retriable` is Inngest's and unchanged).

A few classes also derive from the builtin error a caller may already catch (`InvalidDurationError` is a
`ValueError`, `InvalidArgumentError` and `SerializationError` are `TypeError`s), so code written against
the builtin keeps working.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


class StepflowError(Exception):
    """Root of every error stepflow raises on purpose.

    `retryable` is the retry policy: whether doing the same thing again may succeed. A class sets its default;
    an instance may override it (`StepAttemptError(..., retryable=False)`). The SDK fails a step or a function
    without retry when it raises an error whose `retryable` is False.
    """

    status: int = 500
    code: str = "internal_error"
    retryable: bool = True

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


# --- configuration and definitions -------------------------------------------------------------------------


class ConfigError(StepflowError):
    """The server or engine was started with settings that cannot work."""

    code = "config_error"


class DefinitionError(ConfigError):
    """A function definition (workflow file or Python declaration) is invalid.

    The message always names where the definition came from, the step (when there is one) and the problem.
    """

    code = "invalid_function"
    status = 400

    def __init__(self, problem: str, *, source: str | None = None, function: str | None = None,
                 step: str | None = None) -> None:
        parts = [p for p in (source, f"function {function!r}" if function else None,
                             f"step {step!r}" if step else None) if p]
        where = ", ".join(parts)
        super().__init__(f"{where}: {problem}" if where else problem)
        self.source = source
        self.function = function
        self.step = step
        self.problem = problem


class TargetError(ConfigError):
    """A `module:attribute` or `file.py:attribute` target (an in-process handler, a step or app to package, a
    directory of Lambda functions) is malformed or cannot be found."""

    code = "invalid_target"


class InvalidArgumentError(StepflowError, TypeError):
    """A stepflow API was called with an argument of the wrong kind (e.g. `stepflow.Engine(42)`): a programming
    error. Also a `TypeError`, which is what Python raises for a wrong call."""

    code = "invalid_argument"


class ExpressionError(StepflowError):
    """A CEL expression does not compile, or failed while being evaluated."""

    code = "invalid_expression"
    status = 400


# --- API input -----------------------------------------------------------------------------------------------


class InvalidRequestError(StepflowError):
    """The caller sent something malformed (400)."""

    code = "invalid_request"
    status = 400


class PayloadTooLargeError(InvalidRequestError):
    """The caller sent more than a limit allows (413)."""

    code = "payload_too_large"
    status = 413


class RequestTimeoutError(InvalidRequestError):
    """The caller did not send its request in time (408)."""

    code = "request_timeout"
    status = 408


class InvalidDurationError(InvalidRequestError, ValueError):
    """A duration (`"1m30s"`, a number of seconds, a timedelta) cannot be read, or is negative. Also a
    `ValueError`, as `durations.parse_duration` documented it."""

    code = "invalid_duration"


class UnauthorizedError(StepflowError):
    code = "unauthorized"
    status = 401


class NotFoundError(StepflowError):
    code = "not_found"
    status = 404


class ConflictError(StepflowError):
    code = "conflict"
    status = 409


# --- store ---------------------------------------------------------------------------------------------------


class StoreError(StepflowError):
    """The durable store failed or is in a state the code cannot work with."""

    code = "store_error"


class StoreUnavailableError(StoreError):
    """The database cannot be reached or cannot take writes right now (PostgreSQL down or restarting, a broken
    connection, a SQLite file on a full or failing disk). Nothing was changed by the failed operation, or its
    outcome is unknown to this process; trying again later is the remedy (503)."""

    code = "store_unavailable"
    status = 503


class StoreConflictError(StoreError):
    """A write conflicts with what is stored (a constraint of the database refused it); nothing was written."""

    code = "conflict"
    status = 409


class StoreFullError(StoreUnavailableError):
    """The disk holding the database is full: reads still work, writes fail until space is freed (503)."""

    code = "store_full"


class SchemaVersionError(StoreError):
    """The database schema is older (or newer) than this version of stepflow expects."""

    code = "schema_version"


# --- client side ---------------------------------------------------------------------------------------------


class ApiError(StepflowError):
    """The stepflow server answered a client call with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}", code=code, status=status)
        self.api_message = message


class RunFailedError(StepflowError):
    """A run the caller waited for ended without completing (Failed or Cancelled)."""

    code = "run_failed"

    def __init__(self, run_id: str, status: str, error: Any) -> None:
        detail = ""
        if isinstance(error, dict):
            detail = f": {error.get('code', 'error')}: {error.get('message', '')}"
        super().__init__(f"run {run_id} ended {status}{detail}")
        self.run_id = run_id
        self.run_status = status
        self.error = error


class WaitTimeoutError(StepflowError):
    """A run did not end within the time the caller was willing to wait."""

    code = "wait_timeout"

    def __init__(self, run_id: str | None, status: str | None, timeout: float) -> None:
        what = f"run {run_id}" if run_id else "the event's runs"
        super().__init__(f"{what} still {status or 'not started'} after {timeout:g}s")
        self.run_id = run_id
        self.run_status = status


class NoProgress(StepflowError):
    """A call's answer moved the run nowhere (an op the engine does not know, a step planned again while it is
    pending, a targeted step the SDK did not reach, a malformed op). It is an error of the attempt: recorded
    and retried like a 5xx, so a run never waits for ever on an answer that changed nothing."""

    code = "no_progress"

    def __init__(self, code: str, message: str, step_id: str | None = None, name: str | None = None) -> None:
        super().__init__(message, code=code)
        self.error = {"code": code, "name": "ProtocolError", "message": message}
        self.step_id = step_id
        self.name = name


class CheckpointError(StepflowError):
    """A durable endpoint could not reach the stepflow server for something its request must wait for (a
    checkpoint whose result it needs, an idempotency lookup)."""

    code = "checkpoint_failed"
    status = 503


# --- running steps (engine and runtimes) ---------------------------------------------------------------------


class StepAttemptError(StepflowError):
    """An attempt produced no usable answer (timeout, connection refused, container killed, malformed answer).
    `code` names what happened; `retryable` (per instance) says whether trying again may help."""

    def __init__(self, code: str, message: str, *, retryable: bool = True, logs: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.logs = logs
        self.details = details or {}


class MalformedResponse(StepflowError):
    """The answer is not a Response. Bad JSON is treated like no answer (retried); a document whose `status`
    is not an HTTP status is not retried (`retryable=False`): the step would answer the same again."""

    code = "bad_response"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class DockerError(StepflowError):
    """The Docker Engine API answered a call with an error: `status` is its HTTP status, `message` its text."""

    code = "docker_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Docker Engine answered {status}: {message}", status=status)
        self.message = message


class DockerUnavailable(StepflowError):
    """The Docker engine cannot be reached (not running, socket missing, connection refused)."""

    code = "docker_unavailable"
    status = 503


# --- the SDK: errors user code raises (NonRetriableError, RetryAfterError) or catches (StepError) -------------


class NonRetriableError(StepflowError):
    """Raise it (in a step or in the function) to fail now: no retry will fix this."""

    code = "non_retriable"  # the error code on the wire (Inngest's spelling)
    retryable = False


class RetryAfterError(StepflowError):
    """Raise it to be retried no earlier than `delay` from now (a duration or a datetime)."""

    code = "retry_after"

    def __init__(self, message: str, delay: str | float | timedelta | datetime) -> None:
        from stepflow.durations import parse_duration  # durations raises errors of this module

        super().__init__(message)
        if isinstance(delay, datetime):
            when = delay if delay.tzinfo else delay.replace(tzinfo=UTC)
            self.retry_after = max(0.0, (when - datetime.now(UTC)).total_seconds())
        else:
            self.retry_after = parse_duration(delay)


class StepError(StepflowError):
    """A step failed for good (its last attempt failed, or it raised NonRetriableError).

    Raised inside the function where the step is awaited; catch it to recover. `name`, `message` and `stack`
    describe the original error. Left uncaught, it fails the function without retry.
    """

    code = "step_failed"
    retryable = False

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
    retryable = False


class InvalidStepUsage(StepflowError):
    """The function used the step tools in a way that cannot be made durable (e.g. nested steps)."""

    code = "invalid_step_usage"


class SerializationError(StepflowError, TypeError):
    """A step's or a function's value cannot be stored as JSON (an unsupported type, NaN or Infinity). Also a
    `TypeError`, like `json.dumps` raises for the same problem."""

    code = "not_serializable"
    retryable = False
