"""Durable endpoints' resume calls: when the engine drives a run that went asynchronous, it calls the endpoint
again, signed, with the memoized steps. Recognise the call (`is_resume`), check it (`open_resume`: signature,
then `read_resume`: the Input and the original request it re-plays) and answer it (`sdk_answer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepflow import codec
from stepflow.endpoints.records import HttpResponse, body_bytes, header
from stepflow.errors import UnauthorizedError
from stepflow.protocol import signing
from stepflow.protocol.wire import NO_RETRY_HEADER, RESUME_HEADER, RUN_ID_HEADER
from stepflow.sdk.execution import SdkResponse

if TYPE_CHECKING:
    from stepflow.endpoints.core import Provider

def is_resume(headers: Mapping[str, str]) -> bool:
    """The engine's resume call (aiohttp headers are case-insensitive; ASGI ones arrive lower-cased)."""
    return bool(header(headers, RESUME_HEADER))


@dataclass(slots=True)
class ResumeCall:
    """A resume call from the engine, read: the Input, and the original request it re-plays."""

    document: dict[str, Any]
    method: str
    path: str
    query: str
    body: bytes
    fn: str | None


def open_resume(provider: Provider, headers: Mapping[str, str], body: bytes,
                default_path: str) -> ResumeCall | HttpResponse:
    """A resume call checked: its signature (unless in dev mode), then its Input. A response is the refusal to
    send instead: 401 for a bad signature, 400 not-retried for an Input that is not one."""
    if not provider.dev:
        try:
            signing.verify(body, header(headers, signing.SIGNATURE_HEADER), provider.keys or ["-"])
        except UnauthorizedError as exc:
            return HttpResponse.json({"error": {"code": "unauthorized", "message": exc.message}}, 401)
    call = read_resume(body, default_path)
    if isinstance(call, str):
        return HttpResponse.json({"name": "InvalidResume", "message": call}, 400, {NO_RETRY_HEADER: "true"})
    return call


def sdk_answer(reply: SdkResponse, run_id: str | None) -> HttpResponse:
    """The answer to a resume call: the SDK protocol's reply to the engine."""
    headers = {**reply.headers, **({RUN_ID_HEADER: run_id} if run_id else {})}
    return HttpResponse.json(reply.body, reply.status, headers)


def read_resume(raw: bytes, default_path: str) -> ResumeCall | str:
    """Read a (correctly signed) resume call's Input; a string says why it cannot be one. Only the engine sends
    these, but a malformed one must get a clean 400, not a crash inside the user's web app."""
    try:
        document = codec.loads(raw)
    except codec.JSONDecodeError as exc:
        return f"the resume call's body is not JSON: {exc}"
    if not isinstance(document, dict):
        return "the resume call's body must be the Input object"
    event = document.get("event") or {}
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(event, dict) or not isinstance(data or {}, dict):
        return "the resume call's 'event' must be an object with 'data' an object"
    data = data or {}
    for field_name in ("method", "path", "query_params", "body", "body_encoding", "fn"):
        if data.get(field_name) is not None and not isinstance(data[field_name], str):
            return f"the resume call's event.data.{field_name} must be a string"
    try:
        body = body_bytes(data, strict=True)
    except ValueError:
        return "the resume call's event.data.body is not valid base64"
    return ResumeCall(document=document, method=data.get("method") or "GET", path=data.get("path") or default_path,
                      query=data.get("query_params") or "", body=body, fn=data.get("fn"))
