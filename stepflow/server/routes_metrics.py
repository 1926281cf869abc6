"""`GET /metrics`: the engine's Prometheus metrics, with the shared queue read at scrape time
(stepflow/observability/metrics.py). On the server's own port it is behind the signing key like the REST API
(open in dev); `--metrics-bind HOST:PORT` serves it, alone and without a key, on a listener of its own — which is
how a worker process, having no API, is scraped."""

from __future__ import annotations

from aiohttp import web

from stepflow.engine import EngineCore
from stepflow.ids import now_ms
from stepflow.observability.metrics import CONTENT_TYPE
from stepflow.server.app import ENGINE_KEY

METRICS_PATH = "/metrics"


async def render(engine: EngineCore) -> web.Response:
    engine.metrics.set_queue(await engine.store.queue_stats(now_ms()))
    response = web.Response(body=engine.metrics.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def metrics(request: web.Request) -> web.Response:
    return await render(request.app[ENGINE_KEY])


def setup(app: web.Application) -> None:
    app.router.add_get(METRICS_PATH, metrics)


async def serve_metrics(engine: EngineCore, bind: str) -> web.AppRunner:
    """A listener of its own at `HOST:PORT` that answers only `GET /metrics`, without a key."""
    host, _, port = bind.rpartition(":")
    app = web.Application()
    app[ENGINE_KEY] = engine
    setup(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    return runner
