"""The http runtime: POST the Input as JSON to the step's URL; the JSON body (or the HTTP status) answers."""

from __future__ import annotations

from typing import Any

import aiohttp

from stepflow import codec
from stepflow.contract import MalformedResponse, StepResponse, canonical_json, parse_response_bytes, snippet
from stepflow.runtimes.base import Invocation, StepAnswer, StepAttemptError, parse_retry_after
from stepflow.signing import SIGNATURE_HEADER, sign

USER_AGENT = "stepflow/0.1"
SDK_ANSWER_LIMIT = 64 * 1024 * 1024


class HttpRuntime:
    type = "http"

    def __init__(self, *, max_connections: int = 512) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30,
                                             enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def invoke(self, invocation: Invocation) -> StepAnswer:
        if self._session is None:
            await self.start()
        assert self._session is not None
        url: str = invocation.options["url"]
        headers: dict[str, str] = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        headers.update(invocation.options.get("headers") or {})
        body = invocation.input
        if invocation.signing_key:
            # Send (and sign) the canonical form: the official SDKs verify the signature against it.
            body = canonical_json(codec.loads(body))
            headers[SIGNATURE_HEADER] = sign(body, invocation.signing_key)
        limit = invocation.max_output_bytes
        if invocation.sdk_call:
            # one SDK answer may carry several inline steps, each up to the limit (the engine checks each op)
            limit = max(SDK_ANSWER_LIMIT, 16 * invocation.max_output_bytes)
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=invocation.timeout),
                                          allow_redirects=False) as resp:
                if resp.content_length is not None and resp.content_length > limit:
                    raise _too_large(resp.content_length, limit)
                raw = await _read_limited(resp, limit)
                if invocation.sdk_call:
                    return _sdk_answer(resp.status, resp.headers, raw)
                return _answer(resp.status, resp.headers, raw)
        except StepAttemptError:
            raise
        except TimeoutError as exc:
            raise StepAttemptError("timeout", f"no answer from {url} within {invocation.timeout:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise StepAttemptError("connection_failed", f"cannot connect to {url}: {exc.os_error or exc}") from exc
        except aiohttp.ClientPayloadError as exc:
            raise StepAttemptError("bad_response", f"{url} sent a broken response: {exc}") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise StepAttemptError("connection_failed", f"{url} closed the connection without answering") from exc
        except aiohttp.ClientError as exc:
            raise StepAttemptError("connection_failed", f"request to {url} failed: {exc}") from exc


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> StepAttemptError:
    prefix = "more than " if at_least else ""
    return StepAttemptError(
        "output_too_large",
        f"the step answered {prefix}{size} bytes; the limit is {limit} bytes ({limit / 1048576:g} MiB). "
        "Return less data (e.g. store large results elsewhere and return a reference)",
        retryable=False, details={"size": size, "limit": limit})


def _answer(http_status: int, headers: Any, raw: bytes) -> StepAnswer:
    retry_after = parse_retry_after(headers.get("Retry-After"))
    no_retry = headers.get("X-Inngest-No-Retry", "").lower() == "true"
    try:
        response = parse_response_bytes(raw, default_status=http_status)
    except MalformedResponse as exc:
        if 200 <= http_status < 300:
            raise StepAttemptError("bad_response", str(exc), retryable=exc.retryable) from exc
        # An error page (HTML, plain text): the HTTP status is the answer; keep a snippet for the record.
        response = StepResponse(status=http_status, body=snippet(raw))
    if 200 <= http_status < 300 or response.status == http_status:
        return StepAnswer(response=response, retry_after=retry_after, no_retry=no_retry)
    # The HTTP layer failed (e.g. a proxy's 502) but the body carried a status: trust the more severe one.
    status = max(http_status, response.status) if http_status >= 500 else response.status
    return StepAnswer(response=StepResponse(status=status, body=response.body), retry_after=retry_after,
                      no_retry=no_retry)


def _sdk_answer(http_status: int, headers: Any, raw: bytes) -> StepAnswer:
    """An SDK endpoint's answer: the HTTP status and the JSON body are the Response, unwrapped."""
    retry_after = parse_retry_after(headers.get("Retry-After"))
    no_retry = headers.get("X-Inngest-No-Retry", "").lower() == "true"
    try:
        body = codec.loads(raw) if raw.strip() else None
    except codec.JSONDecodeError as exc:
        if 200 <= http_status < 300:
            raise StepAttemptError("bad_response", f"the SDK endpoint's answer is not JSON; it began with "
                                                   f"{snippet(raw)!r}") from exc
        body = snippet(raw)
    return StepAnswer(response=StepResponse(status=http_status, body=body), retry_after=retry_after,
                      no_retry=no_retry, headers={k.lower(): v for k, v in headers.items()})
