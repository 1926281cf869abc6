"""Durable endpoints' HTTP records, framework-neutral: what both adapters (aiohttp, ASGI) translate to and from.

A response (`HttpResponse`), the API result stored with a run and back (`recorded_result`, `replayed_response`),
request bodies as stored (`body_fields`, `body_bytes`: text, or base64 for bytes that are not UTF-8) and the
headers kept on the way (`kept_headers`, `header`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stepflow import codec
from stepflow.protocol.wire import RUN_ID_HEADER

# headers of a response that its server sets again when it is sent: not recorded, not replayed
SERVER_SET_HEADERS = frozenset({"content-length", "date", "server"})
REPLAY_DROPPED_HEADERS = SERVER_SET_HEADERS | {"transfer-encoding"}


def body_fields(raw: bytes | bytearray) -> dict[str, str]:
    """A body as it is recorded: `{"body": text}`, or base64 with `"body_encoding": "base64"` when the bytes
    are not UTF-8."""
    try:
        return {"body": bytes(raw).decode()}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(bytes(raw)).decode(), "body_encoding": "base64"}


def body_bytes(fields: Mapping[str, Any], *, strict: bool = False) -> bytes:
    """The bytes of a recorded body (`body_fields` back); none is empty. `strict`: a base64 body with anything
    but base64 in it raises ValueError (else such characters are skipped)."""
    body = fields.get("body")
    if body is None:
        return b""
    if fields.get("body_encoding") == "base64":
        return base64.b64decode(str(body), validate=strict)
    return str(body).encode()


def kept_headers(items: Iterable[tuple[Any, Any]],
                 dropped: frozenset[str] = SERVER_SET_HEADERS) -> dict[str, str]:
    """Headers without those the server sets again (`dropped`, lower-case names)."""
    return {str(k): str(v) for k, v in items if str(k).lower() not in dropped}


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header, from aiohttp's case-insensitive headers or from ASGI's, which arrive lower-cased."""
    return headers.get(name) or headers.get(name.lower())


@dataclass(slots=True)
class HttpResponse:
    """A response as the core makes it; each adapter turns it into its framework's (or sends it as is)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> HttpResponse:
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, codec.dumps(data))


def recorded_result(status: int, headers: Iterable[tuple[Any, Any]],
                    body: bytes | bytearray | None) -> dict[str, Any]:
    """A response as the API result stored with the run (and replayed by the output URL). `body` None: a
    streamed response, whose body was not in hand — recorded without it."""
    result: dict[str, Any] = {"status_code": status, "headers": kept_headers(headers)}
    if body is not None:
        result.update(body_fields(body))
    return result


def replayed_response(result: Mapping[str, Any], run_id: str) -> HttpResponse:
    """A stored API result back into the response it recorded, naming its run."""
    headers = kept_headers(dict(result.get("headers") or {}).items(), REPLAY_DROPPED_HEADERS)
    headers[RUN_ID_HEADER] = run_id
    return HttpResponse(int(result.get("status_code", 200)), headers, body_bytes(result))
