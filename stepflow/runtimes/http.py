"""The http runtime: POST the Input as JSON to the step's URL; bring back the status, headers and body."""

from __future__ import annotations

import aiohttp

from stepflow import codec
from stepflow.errors import StepAttemptError
from stepflow.protocol.answers import Delivery, read_limit
from stepflow.protocol.contract import canonical_json
from stepflow.protocol.signing import SIGNATURE_HEADER, sign
from stepflow.runtimes.base import Invocation

USER_AGENT = "stepflow/0.1"


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

    async def invoke(self, invocation: Invocation) -> Delivery:
        if self._session is None:
            await self.start()
        assert self._session is not None
        url: str = invocation.options["url"]
        headers: dict[str, str] = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        headers.update(invocation.options.get("headers") or {})
        if invocation.ctx.traceparent:
            headers["traceparent"] = invocation.ctx.traceparent  # the step's own instrumentation joins the trace
        body = invocation.input
        if invocation.signing_key:
            # Send (and sign) the canonical form: the official SDKs verify the signature against it.
            body = canonical_json(codec.loads(body))
            headers[SIGNATURE_HEADER] = sign(body, invocation.signing_key)
        limit = read_limit(sdk_call=invocation.sdk_call, max_output_bytes=invocation.max_output_bytes)
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=invocation.timeout),
                                          allow_redirects=False) as resp:
                answer_headers = {k.lower(): v for k, v in resp.headers.items()}
                if resp.content_length is not None and resp.content_length > limit:
                    return Delivery(status=resp.status, headers=answer_headers, size=resp.content_length)
                raw, truncated = await _read_up_to(resp, limit)
                return Delivery(body=raw, status=resp.status, headers=answer_headers, truncated=truncated)
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


async def _read_up_to(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, reading no more than `limit` bytes; True when there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return b"".join(chunks), True  # enough to know it is too large
    return b"".join(chunks), False
