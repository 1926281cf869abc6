"""What an answer means: the one function that interprets what any runtime brought back.

A runtime only moves bytes: it delivers the Input and returns a `Delivery` — the transport's status (HTTP's,
or none for stdout and Lambda payloads), the headers, the answer's bytes (or the object an in-process handler
returned) and the logs — or raises `StepAttemptError` when there was no answer at all (timeout, connection
refused, container killed). `interpret` applies the rules once, for every runtime:

- the step contract (docs/step-contract.md): `{"status", "body"}` (or `statusCode`), a JSON string body
  decoded, a bare document is the body with status 200; a `status` that is no HTTP status is not retried;
- an SDK call's answer: the HTTP status and the JSON body as they are (200 output, 206 ops, errors), or the
  `{status, body, headers}` envelope an SDK prints where the transport has no status of its own;
- the output limit (1 MiB by default, encoded) for steps — an SDK call is checked op by op by the engine;
- `X-Inngest-No-Retry: true`, and `Retry-After` as seconds, an HTTP date or an ISO-8601 time.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stepflow import codec
from stepflow.errors import MalformedResponse
from stepflow.errors import StepAttemptError as StepAttemptError  # noqa: PLC0414 - re-exported (engine/executor.py)
from stepflow.protocol.contract import StepResponse, interpret_document, snippet
from stepflow.protocol.wire import NO_RETRY_HEADER, RETRY_AFTER_HEADER

SDK_ANSWER_LIMIT = 64 * 1024 * 1024  # an SDK answer may carry several inline steps, each up to the limit


_NOT_DECODED: Any = object()


@dataclass(slots=True)
class Delivery:
    """What a runtime brought back, not yet interpreted."""

    body: bytes = b""                    # the answer's bytes, as received
    document: Any = _NOT_DECODED         # or the answer already decoded (in-process handlers, stdout lines)
    status: int | None = None            # the transport's status (HTTP); None where it has none
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    logs: str | None = None              # what the step wrote besides its answer (container stderr)
    default_status: int = 200            # the status of a bare answer (500 after a non-zero exit code)
    size: int | None = None              # the answer's size when it was measured before decoding
    truncated: bool = False              # the runtime stopped reading past `read_limit`: it was larger
    details: dict[str, Any] = field(default_factory=dict)  # transport facts for an error record (exit code)


@dataclass(slots=True)
class StepAnswer:
    """An answer, interpreted: the Response and what the retry rules need."""

    response: StepResponse
    retry_after: float | None = None      # seconds, from Retry-After
    logs: str | None = None
    no_retry: bool = False                # X-Inngest-No-Retry: true
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    details: dict[str, Any] = field(default_factory=dict)


def read_limit(*, sdk_call: bool, max_output_bytes: int) -> int:
    """How many bytes of an answer are worth reading: past this it is refused unread."""
    return max(SDK_ANSWER_LIMIT, 16 * max_output_bytes) if sdk_call else max_output_bytes


def interpret(delivery: Delivery, *, sdk_call: bool, max_output_bytes: int) -> StepAnswer:
    """Apply the contract to a delivery; raises StepAttemptError for an answer that is not one."""
    limit = read_limit(sdk_call=sdk_call, max_output_bytes=max_output_bytes)
    size = delivery.size if delivery.size is not None else len(delivery.body)
    if delivery.truncated or size > limit:
        raise too_large(size, limit, at_least=delivery.truncated, logs=delivery.logs)
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    transport = delivery.status
    document = delivery.document
    if document is _NOT_DECODED:
        try:
            document = codec.loads(delivery.body) if delivery.body.strip() else None
        except codec.JSONDecodeError as exc:
            if transport is not None and not 200 <= transport < 300:
                # an error page (HTML, plain text): the HTTP status is the answer; keep a snippet for the record
                return _answer(StepResponse(transport, snippet(delivery.body)), headers, delivery)
            what = "the SDK endpoint's answer" if sdk_call else "the answer"
            raise StepAttemptError("bad_response", f"{what} is not JSON ({exc}); it began with "
                                   f"{snippet(delivery.body)!r}", logs=delivery.logs,
                                   details=delivery.details) from exc
    elif not sdk_call and delivery.size is None:
        try:
            size = len(codec.dumps(document))
        except TypeError as exc:
            raise StepAttemptError("bad_response", f"the answer cannot be stored as JSON: {exc}",
                                   retryable=False, logs=delivery.logs) from exc
        if size > limit:
            raise too_large(size, limit, logs=delivery.logs)
    if sdk_call:
        if transport == 201 and isinstance(document, dict) and "status" in document:
            # streamed (INNGEST_STREAMING): the SDK answered 201 at once, kept the connection alive with
            # whitespace, and ended with {"status", "headers", "body": <the answer, JSON-encoded>}
            body = document.get("body")
            if isinstance(body, str):
                try:
                    body = codec.loads(body) if body.strip() else None
                except codec.JSONDecodeError:
                    pass
            document, transport = {**document, "body": body}, None
        if transport is not None:
            return _answer(StepResponse(transport, document), headers, delivery)
        if isinstance(document, dict) and "status" in document:
            # an SDK printed its response envelope (containers, Lambda, in-process handlers)
            envelope_headers = document.get("headers")
            if isinstance(envelope_headers, dict):
                headers.update({str(k).lower(): str(v) for k, v in envelope_headers.items()})
            try:
                status = int(document["status"])
            except (TypeError, ValueError) as exc:
                raise StepAttemptError("bad_response", f"the SDK's answer has status {document['status']!r}",
                                       retryable=False, logs=delivery.logs) from exc
            return _answer(StepResponse(status, document.get("body")), headers, delivery)
        return _answer(StepResponse(delivery.default_status, document), headers, delivery)
    default = transport if transport is not None else delivery.default_status
    try:
        response = interpret_document(document, default)
    except MalformedResponse as exc:
        if transport is not None and not 200 <= transport < 300:
            return _answer(StepResponse(transport, document), headers, delivery)
        raise StepAttemptError("bad_response", str(exc), retryable=exc.retryable, logs=delivery.logs,
                               details=delivery.details) from exc
    if transport is not None and not 200 <= transport < 300 and response.status != transport:
        # The HTTP layer failed (e.g. a proxy's 502) but the body carried a status: trust the more severe one.
        status = max(transport, response.status) if transport >= 500 else response.status
        response = StepResponse(status, response.body, response.logs)
    return _answer(response, headers, delivery)


def _answer(response: StepResponse, headers: dict[str, str], delivery: Delivery) -> StepAnswer:
    # the Response's own `logs`, then what the runtime caught besides it (a container's stderr), bounded
    logs = "\n".join(text for text in (response.logs, delivery.logs) if text) or None
    if logs is not None and len(logs) > MAX_STEP_LOGS:
        logs = logs[:MAX_STEP_LOGS - len(LOGS_CUT)] + LOGS_CUT
    return StepAnswer(response=response, retry_after=parse_retry_after(headers.get(RETRY_AFTER_HEADER.lower())),
                      logs=logs, no_retry=headers.get(NO_RETRY_HEADER.lower(), "").lower() == "true",
                      headers=headers, details=delivery.details)


MAX_STEP_LOGS = 64 * 1024
LOGS_CUT = "\n[… truncated: the step wrote more than 64 KiB of log lines]\n"


def too_large(size: int, limit: int, *, at_least: bool = False, logs: str | None = None) -> StepAttemptError:
    prefix = "more than " if at_least else ""
    return StepAttemptError(
        "output_too_large",
        f"the step answered {prefix}{size} bytes; the limit is {limit} bytes ({limit / 1048576:g} MiB). "
        "Return less data (e.g. store large results elsewhere and return a reference)",
        retryable=False, logs=logs, details={"size": size, "limit": limit})


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number of seconds, an HTTP date, or an ISO-8601 time (the official Python
    SDK's RetryAfterError sends `2026-12-01T12:24:30.062Z`). A negative or non-finite number is no valid
    Retry-After: it is ignored (the normal backoff applies) rather than read as "retry at once"."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())
