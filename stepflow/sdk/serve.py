"""Serving an App over HTTP, independent of the web framework (the adapters are thin).

The app's HTTP handler (the URL an SDK app is served at) answers:
- `POST ?fnId=ID` — one call of a function: the Input in, the Response out (200 / 206 / 4xx / 5xx). Outside
  dev mode the request must carry a valid `X-Inngest-Signature` (else 401 and nothing runs).
- `PUT` — sync: the app registers its functions with the stepflow server (`POST {server}/fn/register`).
- `GET` — introspection: the app id, its functions and the mode.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from stepflow import codec
from stepflow.errors import UnauthorizedError
from stepflow.protocol import signing
from stepflow.protocol.wire import STEPFLOW_SERVER_HEADER as SERVER_HEADER
from stepflow.sdk.app import App

log = logging.getLogger("stepflow.sdk")


@dataclass(slots=True)
class ServeOptions:
    signing_key: str | None = None          # default: App(signing_key=) or STEPFLOW_SIGNING_KEY
    signing_key_fallback: str | None = None # accepted too, during key rotation
    dev: bool | None = None                 # default: STEPFLOW_DEV=1; dev skips signature checks
    base_url: str | None = None             # the stepflow server, for syncs; default STEPFLOW_BASE_URL
    serve_url: str | None = None            # this endpoint's public URL; default: taken from the PUT request
    extra_keys: list[str] = field(default_factory=list)


@dataclass(slots=True)
class HttpReply:
    status: int
    body: bytes
    headers: dict[str, str]


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> HttpReply:
    return HttpReply(status, codec.dumps(data), {"Content-Type": "application/json", **(headers or {})})


def _error(status: int, code: str, message: str) -> HttpReply:
    return _json(status, {"error": {"code": code, "message": message}})


class ServeHandler:
    """The framework-neutral handler behind the aiohttp and ASGI adapters."""

    def __init__(self, app: App, options: ServeOptions | None = None) -> None:
        self.app = app
        self.options = options or ServeOptions()
        env = os.environ
        self.signing_key = self.options.signing_key or app.signing_key or env.get("STEPFLOW_SIGNING_KEY")
        self.fallback_key = self.options.signing_key_fallback or env.get("STEPFLOW_SIGNING_KEY_FALLBACK")
        dev = self.options.dev
        self.dev = dev if dev is not None else env.get("STEPFLOW_DEV", "").lower() in ("1", "true", "yes")
        self.base_url = (self.options.base_url or env.get("STEPFLOW_BASE_URL") or "").rstrip("/") or None

    async def handle(self, method: str, url: str, query: dict[str, str], headers: dict[str, str],
                     body: bytes) -> HttpReply:
        method = method.upper()
        if method == "POST":
            return await self._call(query, headers, body)
        if method == "PUT":
            return await self._sync(url, headers)
        if method == "GET":
            return _json(200, {"app_id": self.app.id, "mode": "dev" if self.dev else "production",
                               "functions": sorted(self.app.functions),
                               "signing_key": "configured" if self.signing_key else "missing"})
        return _error(405, "method_not_allowed", f"{method} is not supported; use POST, PUT or GET")

    def _keys(self) -> list[str]:
        return [k for k in (self.signing_key, self.fallback_key, *self.options.extra_keys) if k]

    async def _call(self, query: dict[str, str], headers: dict[str, str], body: bytes) -> HttpReply:
        if not self.dev:
            keys = self._keys()
            if not keys:
                return _error(500, "no_signing_key", "this endpoint runs in production mode but has no signing "
                              "key: set STEPFLOW_SIGNING_KEY (or STEPFLOW_DEV=1 for local development)")
            try:
                signing.verify(body, _header(headers, signing.SIGNATURE_HEADER), keys)
            except UnauthorizedError as exc:
                return _error(401, "unauthorized", exc.message)
        function_id = query.get("fnId") or query.get("fn_id")
        if not function_id:
            return _error(400, "invalid_request", "missing ?fnId=<function id>")
        try:
            request = codec.loads(body)
        except codec.JSONDecodeError as exc:
            return _error(400, "invalid_request", f"the request body is not JSON: {exc}")
        if not isinstance(request, dict):
            return _error(400, "invalid_request", "the request body must be the Input object")
        if query.get("stepId") and not (request.get("ctx") or {}).get("step_id"):
            request.setdefault("ctx", {})["step_id"] = query["stepId"]
        reply = await self.app.call(function_id, request)
        return _json(reply.status, reply.body, reply.headers)

    async def _sync(self, url: str, headers: dict[str, str]) -> HttpReply:
        server = self.base_url
        if self.dev and _header(headers, SERVER_HEADER):
            server = _header(headers, SERVER_HEADER).rstrip("/")  # only in dev: it decides where our key goes
        if not server:
            return _error(500, "no_server", "do not know the stepflow server to sync with: set "
                          "STEPFLOW_BASE_URL (or serve(..., base_url=...))")
        endpoint = self.options.serve_url or _strip_query(url)
        payload = {"app_id": self.app.id, "url": endpoint,
                   "functions": self.app.configs(lambda spec: {"type": "http", "url": f"{endpoint}?fnId={spec.id}"})}
        request_headers = {"Content-Type": "application/json"}
        if self.signing_key:
            request_headers["Authorization"] = f"Bearer {self.signing_key}"
        try:
            async with aiohttp.ClientSession() as session, session.post(
                    f"{server}/fn/register", data=codec.dumps(payload), headers=request_headers,
                    timeout=aiohttp.ClientTimeout(total=30)) as resp:
                answer = await resp.read()
                if resp.status >= 400:
                    return HttpReply(502, answer, {"Content-Type": "application/json"})
        except aiohttp.ClientError as exc:
            return _error(502, "sync_failed", f"cannot reach the stepflow server at {server}: {exc}")
        log.info("synced %d function(s) of app %s with %s", len(payload["functions"]), self.app.id, server)
        return HttpReply(200, answer, {"Content-Type": "application/json"})


def _header(headers: dict[str, str], name: str) -> str:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return ""


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
