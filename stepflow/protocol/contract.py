"""The step contract (docs/step-contract.md), shared by every runtime.

Input:    {"event", "events", "steps", "ctx"} — the same document for http, docker and lambda.
Response: {"status", "body", "logs"?} (or `statusCode`); a string body holding JSON is decoded; a document
          with neither field is a bare body with status 200; `logs` (text) is kept with the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from stepflow import codec
from stepflow.errors import MalformedResponse

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024  # 1 MiB, encoded


@dataclass(frozen=True, slots=True)
class StepContext:
    run_id: str
    function_id: str
    app_id: str
    step_id: str
    attempt: int
    max_attempts: int
    traceparent: str | None = None   # W3C trace context of this attempt (docs/observability.md)

    def to_dict(self) -> dict[str, Any]:
        out = {"run_id": self.run_id, "function_id": self.function_id, "app_id": self.app_id,
               "step_id": self.step_id, "attempt": self.attempt, "max_attempts": self.max_attempts}
        if self.traceparent:
            out["traceparent"] = self.traceparent
        return out


def build_input(event: dict[str, Any], steps: dict[str, Any], ctx: StepContext,
                events: list[dict[str, Any]] | None = None) -> bytes:
    """Encode the Input document once; every runtime sends these exact bytes."""
    return codec.dumps({"event": event, "events": events if events is not None else [event],
                        "steps": steps, "ctx": ctx.to_dict()})


def canonical_json(document: Any) -> bytes:
    """`document` in the RFC 8785 (JCS) form: object keys sorted, no whitespace, whole numbers without a
    fraction (`1.0` is written `1`).

    Inngest's official SDKs check `X-Inngest-Signature` against the JCS form of the body they parsed, not
    against the bytes on the wire, so a signed request must carry exactly that form or they reject it.
    orjson writes every other number, string and escape the way JCS does, except in corners step data is
    not expected to reach: keys beyond the Basic Multilingual Plane sort by UTF-8 rather than UTF-16, and
    fractions between 1e-6 and 1e-5 or whole floats of 2**63 and more keep orjson's exponent notation.
    """
    return orjson.dumps(_jcs_numbers(document), option=orjson.OPT_SORT_KEYS)


def _jcs_numbers(value: Any) -> Any:
    # exact type checks, and no call for strings and ints: this runs over every signed Input
    kind = type(value)
    if kind is float:
        # JCS writes numbers as JavaScript does: 1.0 -> 1, -0.0 -> 0, 1e16 -> 10000000000000000, and whole
        # numbers above 2**53 from their shortest digits (3.2311429614555152e16 -> 32311429614555150).
        if value.is_integer() and abs(value) < 2 ** 63:
            return int(Decimal(repr(value)))
        return value
    if kind is dict:
        return {key: _jcs_numbers(item) if type(item) in _NESTED else item for key, item in value.items()}
    if kind is list:
        return [_jcs_numbers(item) if type(item) in _NESTED else item for item in value]
    return value


_NESTED = frozenset({float, dict, list})


@dataclass(frozen=True, slots=True)
class StepResponse:
    """A step's answer, normalised: an HTTP-like status and the decoded body."""

    status: int
    body: Any
    logs: str | None = None   # the Response's own `logs` (kept with the step, not in its stored result)

    def to_stored(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body}


def interpret_document(document: Any, default_status: int = 200) -> StepResponse:
    """Turn a decoded answer into a StepResponse, following the contract's fallbacks."""
    if isinstance(document, dict) and ("status" in document or "statusCode" in document):
        status = document.get("status", document.get("statusCode"))
        if isinstance(status, str) and status.isascii() and status.isdigit():
            status = int(status)
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise MalformedResponse(
                f"'status' must be an HTTP status code (100-599), got {status!r}. A result that has its own "
                "'status' field must be wrapped: {\"status\": 200, \"body\": <the result>}", retryable=False)
        body = document.get("body")
        if isinstance(body, str):
            stripped = body.lstrip()
            if stripped[:1] in ("{", "[", '"') or stripped in ("true", "false", "null") or _looks_numeric(stripped):
                try:
                    body = codec.loads(body)
                except codec.JSONDecodeError:
                    pass  # a plain string body stays a string
        logs = document.get("logs")
        return StepResponse(status=status, body=body, logs=logs if isinstance(logs, str) and logs else None)
    return StepResponse(status=default_status, body=document)


def parse_response_bytes(raw: bytes, default_status: int = 200) -> StepResponse:
    """Decode a JSON answer. An empty answer is a bare `null` body."""
    if not raw.strip():
        return StepResponse(status=default_status, body=None)
    try:
        document = codec.loads(raw)
    except codec.JSONDecodeError as exc:
        raise MalformedResponse(f"the answer is not JSON ({exc}); it began with {snippet(raw)!r}") from exc
    return interpret_document(document, default_status)


def snippet(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > limit else "")


def _looks_numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or (text[0] == "-" and text[1:2].isdigit()))
