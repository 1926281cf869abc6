"""Serve an App from any ASGI framework (FastAPI, Starlette, …):

    api = FastAPI()
    api.mount("/api/stepflow", stepflow.sdk.serve_asgi.asgi_app(app))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from stepflow.sdk.app import App
from stepflow.sdk.serve import ServeHandler, ServeOptions

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def asgi_app(app: App, options: ServeOptions | None = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    serving = ServeHandler(app, options)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host") or f"{scope['server'][0]}:{scope['server'][1]}"
        root, path = scope.get("root_path", ""), scope.get("path", "")
        if root and not path.startswith(root):  # servers differ on whether `path` includes the mount prefix
            path = root + path
        url = f"{scope.get('scheme', 'http')}://{host}{path}"
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        reply = await serving.handle(scope["method"], url, query, headers, body)
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]})
        await send({"type": "http.response.body", "body": reply.body})

    return asgi
