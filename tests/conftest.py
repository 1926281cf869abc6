"""Shared fixtures. Everything is real: a stepflow server on 127.0.0.1 (in this process, on its own port,
with a real SQLite file), and real HTTP step servers. Nothing of stepflow's is mocked."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stepflow import Client, parse_function
from stepflow.engine import EngineConfig, EngineCore
from stepflow.server import ServerSettings, create_app
from stepflow.server.http_protocol import StepflowAppRunner
from stepflow.store import SqliteStore, Store

POSTGRES_URL = os.environ.get("STEPFLOW_TEST_POSTGRES_URL")
BACKEND = os.environ.get("STEPFLOW_TEST_BACKEND", "sqlite")  # "postgres": the suite runs on PostgreSQL

# Every test runs on both stores: ./scripts/test runs the suite once on SQLite and once more with
# STEPFLOW_TEST_BACKEND=postgres, where every store the fixtures make is a PostgreSQL schema. A test that needs
# no store, or picks its backends itself (e.g. parametrized over both), is marked `runs_once` and is left out
# of the second pass. A new test file runs on both without anyone having to list it.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runs_once: needs no store, or chooses its backends itself: not run again "
                                       "in the PostgreSQL pass")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND != "postgres":
        return
    once = [item for item in items if item.get_closest_marker("runs_once")]
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = [item for item in items if not item.get_closest_marker("runs_once")]


async def make_store(tmp_path: Path, name: str = "stepflow", backend: str | None = None) -> Store:
    """A fresh store for one test: a SQLite file, or a new migrated schema in the test PostgreSQL."""
    backend = backend or BACKEND
    if backend == "sqlite":
        return SqliteStore(tmp_path / f"{name}.db")
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need STEPFLOW_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1/test); "
                    "./scripts/test sets it")
    from stepflow.store.postgres import PostgresStore

    # the same (test, name) gets the same schema: a test may reopen a store, as a restarted process would
    schema = "t_" + hashlib.sha1(f"{tmp_path}/{name}".encode()).hexdigest()[:16]
    separator = "&" if "?" in POSTGRES_URL else "?"
    store = PostgresStore(f"{POSTGRES_URL}{separator}schema={schema}")
    await store.migrate()
    if schema not in _schemas:
        _schemas.append(schema)
    return store


_schemas: list[str] = []


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The store contract suite's store (tests/store/): a fresh one per test on each backend."""
    opened = await make_store(tmp_path, "contract", request.param)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(autouse=True)
async def _drop_test_schemas() -> AsyncIterator[None]:
    yield
    if _schemas and POSTGRES_URL:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_URL.split("?")[0])
        try:
            while _schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{_schemas.pop()}" CASCADE')
        finally:
            await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    engine: EngineCore
    client: Client
    settings: ServerSettings
    db_path: Path
    app: web.Application | None = None

    async def register(self, config: dict[str, Any]) -> int:
        return await self.engine.register(parse_function(config, source="test"))


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def stepflow_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start stepflow servers: `await factory(settings=..., config=...)`. All are stopped at teardown."""
    started: list[tuple[web.AppRunner, EngineCore, Client]] = []

    async def start(settings: ServerSettings | None = None, config: EngineConfig | None = None,
                    db_path: Path | None = None) -> RunningServer:
        settings = settings or ServerSettings(dev=True)
        config = config or EngineConfig(backoff_base=0.01, backoff_max=0.2, poll_interval=0.2)
        db = db_path or tmp_path / f"stepflow-{len(started)}.db"
        store = SqliteStore(db) if db_path is not None else await make_store(tmp_path, f"stepflow-{len(started)}")
        engine = EngineCore(store, config)
        await engine.start()
        runner = StepflowAppRunner(create_app(engine, settings), access_log=None,
                                   header_timeout=settings.header_timeout)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        client = Client(url, signing_key=settings.signing_keys[0] if settings.signing_keys else None,
                        event_key=settings.event_keys[0] if settings.event_keys else None)
        started.append((runner, engine, client))
        return RunningServer(url=url, engine=engine, client=client, settings=settings, db_path=db, app=runner.app)

    yield start
    for runner, engine, client in reversed(started):
        await client.close()
        await runner.cleanup()
        await engine.stop(grace=1.0)


@pytest.fixture
async def stepflow(stepflow_factory: ServerFactory) -> RunningServer:
    """A dev-mode (keyless) server with fast retries (backoff base 10 ms)."""
    return await stepflow_factory()


Handler = Callable[[dict[str, Any], web.Request], Awaitable[web.StreamResponse]]


@dataclass
class StepServer:
    """A real HTTP server whose routes are step handlers; it records every Input it receives."""

    url: str = ""
    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def route(self, path: str, handler: Handler) -> str:
        """Serve `handler` at `path`; returns the full URL to put in a runtime."""
        self.handlers[path] = handler
        return self.url + path

    def json(self, path: str, document: Any, status: int = 200) -> str:
        """Serve a fixed JSON answer."""
        async def handler(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
            return web.json_response(document, status=status)

        return self.route(path, handler)


@pytest.fixture
async def step_server() -> AsyncIterator[StepServer]:
    server = StepServer()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        handler = server.handlers.get(request.path)
        if handler is None:
            return web.json_response({"error": "no handler"}, status=404)
        payload = await request.json()
        server.calls.setdefault(request.path, []).append(payload)
        server.headers.setdefault(request.path, []).append(dict(request.headers))
        return await handler(payload, request)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


def workflow_config(steps: dict[str, Any], *, id: str = "wf", event: str = "test/go",
                    **extra: Any) -> dict[str, Any]:
    return {"id": id, "triggers": [{"event": event}], "steps": steps, **extra}
