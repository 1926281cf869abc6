"""The Runtime protocol. A driver delivers the Input to a step and brings back its answer; the executor alone
decides what the answer means (store, retry, fail), so every runtime follows the same rules."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime
from dataclasses import dataclass, field
from typing import Any, Protocol

from stepflow.contract import StepContext, StepResponse
from stepflow.errors import StepflowError


@dataclass(slots=True)
class Invocation:
    input: bytes                      # the encoded Input document, sent as is
    options: dict[str, Any]           # the step's runtime options (url, image, function, …)
    ctx: StepContext
    timeout: float                    # seconds
    max_output_bytes: int
    signing_key: str | None = None
    # SDK protocol call (a code function): the answer's HTTP status and JSON body are the Response as they
    # are (the body is the function's output or its ops), not a `{status, body}` document to unwrap.
    sdk_call: bool = False
    document: dict[str, Any] | None = None  # the Input, decoded, for runtimes in this process


@dataclass(slots=True)
class StepAnswer:
    response: StepResponse
    retry_after: float | None = None  # seconds, from a Retry-After header or equivalent
    logs: str | None = None           # what the step wrote besides its answer (e.g. container stderr)
    no_retry: bool = False            # X-Inngest-No-Retry: true
    headers: dict[str, str] | None = None  # the answer's headers, names in lower case (http runtimes)


class StepAttemptError(StepflowError):
    """An attempt produced no usable answer. `retryable` says whether trying again may help."""

    def __init__(self, code: str, message: str, *, retryable: bool = True, logs: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.logs = logs
        self.details = details or {}


class Runtime(Protocol):
    type: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def invoke(self, invocation: Invocation) -> StepAnswer: ...


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number of seconds, an HTTP date, or an ISO-8601 time (the official Python
    SDK's RetryAfterError sends `2026-12-01T12:24:30.062Z`)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


@dataclass(slots=True)
class RuntimeRegistry:
    """The runtimes an engine can use, by type."""

    runtimes: dict[str, Runtime] = field(default_factory=dict)

    def add(self, runtime: Runtime) -> None:
        self.runtimes[runtime.type] = runtime

    def get(self, type_: str) -> Runtime:
        runtime = self.runtimes.get(type_)
        if runtime is None:
            raise StepAttemptError("runtime_unavailable",
                                   f"no {type_!r} runtime is configured on this engine", retryable=False)
        return runtime

    async def start(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.start()

    async def close(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.close()
