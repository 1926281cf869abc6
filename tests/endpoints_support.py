"""Shared by the durable endpoint tests: an API factory, an in-process server, helpers and a real HTTP
proxy that can delay or refuse checkpoints. It holds no tests."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningServer, ServerFactory, free_port

from stepflow import endpoints
from stepflow.endpoints.core import Provider
from stepflow.engine import EngineConfig, EngineCore
from stepflow.server import ServerSettings, create_app
from stepflow.store import SqliteStore

FAST = EngineConfig(backoff_base=0.01, backoff_max=0.2, poll_interval=0.1)


@dataclass
class Api:
    url: str
    provider: Provider


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def api_factory() -> AsyncIterator[ApiFactory]:
    """Start aiohttp APIs behind the durable-endpoints middleware: `await api_factory(server_url, routes,
    **setup_options)`; `routes(app)` adds the handlers. Dev mode unless the options say otherwise."""
    started: list[tuple[web.AppRunner, Provider]] = []

    async def start(base_url: str, routes: Callable[[web.Application], None], **options: Any) -> Api:
        port = free_port()
        options.setdefault("dev", True)
        provider = endpoints.setup(domain=f"http://127.0.0.1:{port}", base_url=base_url, **options)
        app = web.Application(middlewares=[provider.aiohttp_middleware])
        routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.append((runner, provider))
        return Api(url=f"http://127.0.0.1:{port}", provider=provider)

    yield start
    for runner, provider in reversed(started):
        await provider.close()
        await runner.cleanup()


@pytest.fixture
async def server(stepflow_factory: ServerFactory) -> RunningServer:
    return await stepflow_factory(config=FAST)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def stored_run(server: RunningServer, api: Api, run_id: str) -> dict[str, Any]:
    """The run once the middleware's checkpoints have reached the server."""
    assert await api.provider.wait(10), "the checkpoints were not drained"
    return await server.client.get_run(run_id)



# --- checkpointing is off the request path and never loses anything ------------------------------------


async def start_stepflow_on(port: int, db: Path, settings: ServerSettings | None = None,
                            ) -> tuple[web.AppRunner, EngineCore]:
    engine = EngineCore(SqliteStore(db), FAST)
    await engine.start()
    runner = web.AppRunner(create_app(engine, settings or ServerSettings(dev=True)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, engine


def three_step_handler(calls: Counter[str]) -> Any:
    @endpoints.durable(id="three")
    async def handler(request: web.Request, step: Any) -> web.Response:
        payload = await step.run("payload", request.json)

        def one() -> int:
            calls["one"] += 1
            return int(payload["n"]) + 1

        a = await step.run("one", one)
        b = await step.run("two", lambda: a * 2)
        return web.json_response({"n": payload["n"], "result": b})

    return handler



# --- the async path -------------------------------------------------------------------------------------


def checkout_routes(calls: Counter[str], sleep: str = "300ms", **options: Any) -> Callable[[web.Application], None]:
    def charge_card(amount: int) -> dict[str, Any]:
        calls["charge"] += 1
        return {"charge_id": "ch_1", "amount": amount}

    async def send_receipt(charge: dict[str, Any]) -> dict[str, Any]:
        calls["receipt"] += 1
        return {"receipt": f"r-{charge['charge_id']}", "amount": charge["amount"]}

    @endpoints.durable(id="checkout", **options)
    async def checkout(request: web.Request, step: Any) -> web.Response:
        calls["handler"] += 1
        order = await step.run("order", request.json)
        charge = await step.run("charge", charge_card, order["amount"])
        await step.sleep("settle", sleep)  # the handler turns asynchronous here
        receipt = await step.run("receipt", send_receipt, charge)
        return web.json_response(receipt, status=201, headers={"X-Receipt": receipt["receipt"]})

    def routes(app: web.Application) -> None:
        app.router.add_post("/checkout", checkout)

    return routes



@dataclass
class CheckpointProxy:
    """A real HTTP proxy in front of the stepflow server: it may hold each checkpoint POST for `delay` seconds,
    answers 502 while the server is down, and records the (op, run_id) of every checkpoint delivered, in order."""

    target: str
    delay: float = 0.0
    url: str = ""
    delivered: list[tuple[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self) -> CheckpointProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def forward(self, request: web.Request) -> web.Response:
        is_checkpoint = request.method == "POST" and request.path == "/v1/checkpoints"
        if is_checkpoint:
            await asyncio.sleep(self.delay)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        try:
            async with aiohttp.ClientSession() as session, session.request(
                    request.method, self.target + request.rel_url.path_qs, headers=headers, data=body) as up:
                answer = web.Response(status=up.status, body=await up.read(),
                                      headers={"Content-Type": up.headers.get("Content-Type", "application/json")})
        except aiohttp.ClientConnectionError:
            return web.json_response({"error": "upstream down"}, status=502)
        if is_checkpoint and up.status == 200:
            self.delivered += [(c["op"], c["run_id"]) for c in json.loads(body)["checkpoints"]]
        return answer

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
