"""What the HTTP layer answers before any route runs: requests the parser refuses get the JSON error envelope
with the right status, slow clients cannot hold connections, and a body that cannot be read as sent is a 400.
Raw sockets against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import RunningServer, ServerFactory

from stepflow import codec
from stepflow.server import ServerSettings


async def exchange(server: RunningServer, raw: bytes, *, then: bytes | None = None, pause: float = 0.0,
                   read_timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (optionally more after a pause); return (status, headers, body) of the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        if then is not None:
            await asyncio.sleep(pause)
            writer.write(then)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout)
        lines = head.decode().rstrip().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), read_timeout)
    finally:
        writer.close()
    return int(lines[0].split()[1]), headers, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int, code: str,
                      needle: str) -> None:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json"), headers
    error = codec.loads(body)["error"]
    assert error["code"] == code and needle in error["message"], error


async def test_a_request_line_too_long_is_414(stepflow: RunningServer) -> None:
    answer = await exchange(stepflow, b"GET /v1/runs?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_json_error(*answer, 414, "uri_too_long", "shorten the URL")


async def test_a_header_too_large_is_431(stepflow: RunningServer) -> None:
    answer = await exchange(stepflow, b"GET /v1/runs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert_json_error(*answer, 431, "header_too_large", "longer than 8190 bytes")


async def test_too_many_headers_is_431(stepflow: RunningServer) -> None:
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
    answer = await exchange(stepflow, b"GET /v1/runs HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert_json_error(*answer, 431, "too_many_headers", "too many headers")


async def test_a_malformed_request_is_a_json_400(stepflow: RunningServer) -> None:
    answer = await exchange(stepflow, b"GET /v1/runs HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
    assert_json_error(*answer, 400, "bad_request", "malformed HTTP request")


async def test_a_body_that_is_not_the_gzip_it_claims_is_400(stepflow: RunningServer) -> None:
    body = b'{"name": "test/go"}'
    answer = await exchange(stepflow, b"POST /e/dev HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                                      b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    status, _, raw = answer
    assert status == 400, raw
    document = codec.loads(raw)  # the event API's shape: {"error": message, "code", "status"}
    assert document["code"] == "invalid_request" and "cannot be read as sent (gzip)" in document["error"]
    assert (await stepflow.client._request("GET", "/v1/runs"))["data"] == []


@pytest.fixture
async def impatient(stepflow_factory: ServerFactory) -> RunningServer:
    return await stepflow_factory(settings=ServerSettings(dev=True, header_timeout=0.5, body_timeout=0.5))


async def test_half_sent_headers_are_cut_off(impatient: RunningServer) -> None:
    started = time.monotonic()
    status, headers, body = await exchange(impatient, b"GET /v1/runs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert time.monotonic() - started < 5
    assert_json_error(status, headers, body, 408, "request_timeout", "headers did not arrive within 0.5s")


async def test_a_slow_body_is_cut_off(impatient: RunningServer) -> None:
    started = time.monotonic()
    status, _, raw = await exchange(impatient, b"POST /e/dev HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                                               b"Connection: close\r\n\r\n" + b'{"name": ')
    assert time.monotonic() - started < 5
    assert status == 408 and "body did not arrive within 0.5s" in codec.loads(raw)["error"]
    assert (await impatient.client._request("GET", "/v1/runs"))["data"] == []


async def test_a_slow_but_steady_client_within_the_limits_is_served(impatient: RunningServer) -> None:
    status, _, raw = await exchange(impatient, b"GET /health HTTP/1.1\r\nHost: x\r\n",
                                    then=b"Connection: close\r\n\r\n", pause=0.2)
    assert status == 200 and codec.loads(raw) == {"status": "ok"}
