"""Starting and stopping a whole server process: store, engine, functions from files, HTTP listener."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from stepflow.definitions import load_function_file
from stepflow.engine import EngineConfig, EngineCore
from stepflow.errors import DefinitionError
from stepflow.server.app import ServerSettings, create_app
from stepflow.server.http_protocol import StepflowAppRunner
from stepflow.server.routes_apps import SYNC_LOG_KEY, sync_app
from stepflow.server.routes_metrics import serve_metrics
from stepflow.store import store_from_url

log = logging.getLogger("stepflow.server")


@dataclass(slots=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8288
    store_url: str | None = None
    function_files: list[str] = field(default_factory=list)
    app_urls: list[str] = field(default_factory=list)       # SDK endpoints to sync (PUT) at start
    settings: ServerSettings = field(default_factory=ServerSettings)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run_workers: bool = True
    metrics_bind: str | None = None    # HOST:PORT: GET /metrics on a listener of its own, without a key


async def run_server(options: ServerOptions, announce: Callable[[str], None] = print) -> None:
    """Run until SIGINT/SIGTERM. Definitions are checked before anything listens: a bad file stops startup."""
    functions = [fn for path in options.function_files for fn in load_function_file(path)]
    seen: dict[str, str | None] = {}
    for fn in functions:
        if fn.id in seen:
            raise DefinitionError(f"declared in both {seen[fn.id]} and {fn.source}", function=fn.id)
        seen[fn.id] = fn.source
    engine = EngineCore(store_from_url(options.store_url), options.engine, run_workers=options.run_workers)
    await engine.start()
    runner: web.AppRunner | None = None
    metrics_runner: web.AppRunner | None = None
    try:
        # Workflow functions are what this start's files say: ones left active in the store by an earlier start
        # with other files would otherwise keep answering events unseen. (SDK apps' functions stay: they sync.)
        wanted = {fn.id for fn in functions}
        for _, stored in engine.functions.active() if options.settings.dev else []:  # dev: one process owns them
            if stored.kind == "workflow" and stored.id not in wanted:
                await engine.functions.deactivate(stored.id)
                announce(f"  function {stored.id}: deactivated (in the store from an earlier start, not in these "
                         "files; its running runs finish)")
        for fn in functions:
            version = await engine.register(fn)
            announce(f"  function {fn.id} (v{version}) from {fn.source}: {len(fn.steps)} step(s), "
                     f"triggers {', '.join(t.event or f'cron {t.cron}' for t in fn.triggers)}")
        app = create_app(engine, options.settings)
        runner = StepflowAppRunner(app, access_log=None, handle_signals=False,
                                   header_timeout=options.settings.header_timeout)
        await runner.setup()
        site = web.TCPSite(runner, options.host, options.port, reuse_address=True, backlog=1024)
        await site.start()
        store_desc = engine.store.url.split("://", 1)[0] + "://" + engine.store.url.split("@", 1)[-1] \
            if "@" in engine.store.url else engine.store.url  # never print a database password
        if store_desc.startswith("sqlite:///"):
            store_desc = f"SQLite {Path(store_desc[len('sqlite:///'):]).resolve()}"
        if options.metrics_bind:
            metrics_runner = await serve_metrics(engine, options.metrics_bind)
            announce(f"  metrics: http://{options.metrics_bind}/metrics (no key)")
        announce(f"stepflow listening on http://{options.host}:{options.port}")
        announce(f"  store: {store_desc}")
        announce(f"  events: POST http://{options.host}:{options.port}/e/<event key>   "
                 f"REST: http://{options.host}:{options.port}/v1/")
        if not options.settings.rest_auth_required:
            announce("  dev mode: no keys configured — the REST API and the event API accept any caller")
        server_url = f"http://{options.host}:{options.port}"
        sync_log = app[SYNC_LOG_KEY]
        syncs = [asyncio.create_task(sync_app(url, server_url, sync_log)) for url in options.app_urls]
        for url in options.app_urls:
            announce(f"  app: {url} (syncing)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        announce("stepflow shutting down: finishing in-flight steps…")
        for task in syncs:
            task.cancel()
    finally:
        # long polls (`?wait=`) answer now: the HTTP shutdown below waits for open requests to finish
        engine.watcher.close()
        if runner is not None:
            await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await engine.stop()


async def run_worker(store_url: str, config: EngineConfig, announce: Callable[[str], None] = print,
                     metrics_bind: str | None = None) -> None:
    """An engine with no HTTP API: claims and executes jobs from the shared store until SIGINT/SIGTERM; with
    `metrics_bind` (HOST:PORT), it answers GET /metrics there."""
    engine = EngineCore(store_from_url(store_url), config)
    await engine.start()
    metrics_runner: web.AppRunner | None = None
    try:
        announce(f"stepflow worker {engine.worker_id} on {engine.store.url.split('@')[-1]}: "
                 f"{len(engine.functions.active())} function(s), concurrency {config.concurrency}")
        if metrics_bind:
            metrics_runner = await serve_metrics(engine, metrics_bind)
            announce(f"  metrics: http://{metrics_bind}/metrics")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        announce("stepflow worker stopping: finishing in-flight steps…")
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await engine.stop()
