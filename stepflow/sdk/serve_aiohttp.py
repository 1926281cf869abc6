"""Serve an App from an aiohttp application:

    web_app = web.Application()
    stepflow.sdk.serve_aiohttp.add_routes(web_app, app, path="/api/stepflow")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from stepflow.sdk.app import App
from stepflow.sdk.serve import ServeHandler, ServeOptions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler(app: App, options: ServeOptions | None = None) -> Handler:
    serving = ServeHandler(app, options)

    async def handle(request: web.Request) -> web.Response:
        reply = await serving.handle(request.method, str(request.url), dict(request.query),
                                      dict(request.headers), await request.read())
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    return handle


def add_routes(web_app: web.Application, app: App, *, path: str = "/api/stepflow",
               options: ServeOptions | None = None) -> None:
    h = handler(app, options)
    for method in ("GET", "POST", "PUT"):
        web_app.router.add_route(method, path, h)
