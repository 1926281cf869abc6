"""The HTTP connection handling under the server: JSON errors for requests the HTTP parser rejects, and a time
limit on receiving a request's headers.

aiohttp answers a request its parser rejects (a request line or header over 8 KiB, too many headers, a
malformed line) before any middleware runs, with a text/plain 400; and it keeps a connection that sent half a
request's headers open until its keep-alive timeout (75 s), so slow clients can hold connections. Neither is
configurable through aiohttp's public options, so `StepflowAppRunner` installs a request handler that
answers those rejections with the server's JSON error envelope and the right status (414 for a request line,
431 for headers, 400 otherwise), and closes a connection whose request headers do not arrive in full within
`header_timeout` (408). The time limit on a request's body is applied where bodies are read (`read_body`).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from stepflow import codec
from stepflow.server.app import is_sdk_route

_REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) (\S+) HTTP/1\.[01]\r?\n")
_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ", b"HEAD ", b"OPTIONS ")


def error_body(status: int, code: str, message: str) -> bytes:
    return codec.dumps({"error": {"code": code, "message": message}})


def classify_parser_error(exc: BaseException | None, message: str | None) -> tuple[int, str, str]:
    """(status, code, message) for a request the HTTP parser refused."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        raw = bytes(line) if isinstance(line, (bytes, bytearray)) else str(line).encode()
        limit = exc.args[1] if len(exc.args) > 1 else "8190"
        if raw.startswith((b"/", b"http://", b"https://")) or raw.startswith(_METHODS):
            return 414, "uri_too_long", f"the request line is longer than {limit} bytes; shorten the URL"
        return 431, "header_too_large", f"a request header is longer than {limit} bytes"
    text = message or (exc.message if isinstance(exc, HttpProcessingError) else "") or "malformed HTTP request"
    if "too many headers" in text.lower():
        return 431, "too_many_headers", "the request has too many headers"
    return 400, "bad_request", f"malformed HTTP request: {text}"


class StepflowRequestHandler(RequestHandler):
    """aiohttp's handler with JSON parser errors and a deadline for each request's headers."""

    def __init__(self, manager: Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        # the last bytes received: the parser keeps nothing of a request it refuses, and the error's shape
        # depends on the route (the official SDKs' routes have their own), read from the last request line
        self._recent = b""

    def data_received(self, data: bytes) -> None:
        self._recent = (self._recent + data)[-4096:]
        parsed_before = self._request_count
        super().data_received(data)
        if self._request_count > parsed_before:
            self._cancel_header_deadline()  # a request's headers arrived in full
        elif data and self._header_deadline is None and self._header_timeout > 0:
            # part of a request's headers: the rest must follow within the limit
            self._header_deadline = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = error_body(408, "request_timeout", f"the request's headers did not arrive within "
                                                  f"{self._header_timeout:g}s")
        transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.force_close()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        status, code, text = classify_parser_error(exc, message)
        lines = _REQUEST_LINE.findall(self._recent)
        sdk_route = bool(lines) and is_sdk_route(lines[-1].split(b"?", 1)[0].decode("latin-1"))
        body = codec.dumps({"error": text, "code": code, "status": status}) if sdk_route \
            else error_body(status, code, text)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class _StepflowServer(Server):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return StepflowRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs)


class StepflowAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections are handled by `StepflowRequestHandler`."""

    def __init__(self, app: web.Application, *, header_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # Rebuild the server aiohttp made, with the same handler and options, but our request handler.
        return _StepflowServer(server.request_handler, request_factory=server.request_factory,
                               handler_cancellation=server.handler_cancellation, loop=server._loop,
                               header_timeout=self._header_timeout, **server._kwargs)
