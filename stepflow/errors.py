"""The one error tree of stepflow. Every error stepflow raises on purpose derives from `StepflowError`.

Server-side errors carry an HTTP status and a stable machine-readable `code`, so the API layer can turn any of
them into `{"error": {"code", "message"}}` without knowing where they came from.
"""

from __future__ import annotations

from typing import Any


class StepflowError(Exception):
    """Root of every error stepflow raises on purpose."""

    status: int = 500
    code: str = "internal_error"

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
