"""Durable endpoints and idempotency keys (issue 7): a key replays the recorded result, sees a run still in the
middleware's buffer, and runs concurrent and simultaneous duplicates once. Split from tests/test_endpoints.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web
from conftest import RunningServer
from endpoints_support import (  # noqa: F401 - fixtures are found by name
    ApiFactory,
    CheckpointProxy,
    api_factory,
    checkout_routes,
    http,
    server,
)

from stepflow import endpoints

# --- idempotency ----------------------------------------------------------------------------------------


async def test_an_idempotency_key_replays_the_recorded_result(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    def charge(amount: int) -> str:
        calls["pay"] += 1
        return f"ch-{calls['pay']}"

    @endpoints.durable(id="charge")
    async def pay(request: web.Request, step: Any) -> web.Response:
        order = await step.run("order", request.json)
        charge_id = await step.run("charge", charge, order["amount"])
        return web.json_response({"charge": charge_id}, status=201, headers={"X-Charge": charge_id})

    def routes(app: web.Application) -> None:
        app.router.add_post("/pay", pay)
        checkout_routes(calls)(app)

    api = await api_factory(server.url, routes)
    async with http.post(f"{api.url}/pay", json={"amount": 5}, headers={"Idempotency-Key": "k-1"}) as resp:
        assert resp.status == 201 and await resp.json() == {"charge": "ch-1"}
        first_run = resp.headers["X-Run-ID"]
    # at once: the first request's checkpoints may still be in the middleware's buffer
    async with http.post(f"{api.url}/pay", json={"amount": 5}, headers={"Idempotency-Key": "k-1"}) as resp:
        assert resp.status == 201 and await resp.json() == {"charge": "ch-1"}
        assert resp.headers["X-Charge"] == "ch-1"
        assert resp.headers["X-Run-ID"] == first_run
    async with http.post(f"{api.url}/pay", json={"amount": 5}, headers={"Idempotency-Key": "k-1"}) as resp:
        assert resp.status == 201 and await resp.json() == {"charge": "ch-1"}
    assert calls["pay"] == 1
    async with http.post(f"{api.url}/pay", json={"amount": 5}, headers={"Idempotency-Key": "k-2"}) as resp:
        assert await resp.json() == {"charge": "ch-2"}
        assert resp.headers["X-Run-ID"] != first_run
    assert calls["pay"] == 2

    # a repeat while the first request's run is still asynchronous waits for that run's answer
    headers = {"Idempotency-Key": "checkout-1"}
    async with http.post(f"{api.url}/checkout", json={"amount": 8}, headers=headers,
                         allow_redirects=False) as resp:
        assert resp.status == 303
        checkout_run = resp.headers["X-Run-ID"]
    async with http.post(f"{api.url}/checkout", json={"amount": 8}, headers=headers) as resp:
        assert resp.status == 201 and await resp.json() == {"receipt": "r-ch_1", "amount": 8}
        assert resp.headers["X-Run-ID"] == checkout_run
    assert calls["receipt"] == 1 and calls["charge"] == 1  # the checkout's charge step ran once
    runs = (await server.client.list_runs(function_id="charge"))["data"]
    assert len(runs) == 2


async def test_idempotency_sees_a_run_still_in_the_middlewares_buffer(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    """The repeat arrives before the first request's checkpoints reached the server (a real proxy in front of
    the server delays them): it must not run the handler again."""
    proxy = await CheckpointProxy(server.url, delay=0.5).start()
    calls: Counter[str] = Counter()

    @endpoints.durable(id="charge")
    async def pay(request: web.Request, step: Any) -> web.Response:
        order = await step.run("order", request.json)
        return web.json_response({"charge": await step.run("charge", lambda: calls.update(["charge"]) or
                                                           f"ch-{calls['charge']}-{order['amount']}")})

    try:
        api = await api_factory(proxy.url, lambda app: app.router.add_post("/pay", pay))
        headers = {"Idempotency-Key": "once"}
        async with http.post(f"{api.url}/pay", json={"amount": 3}, headers=headers) as resp:
            assert await resp.json() == {"charge": "ch-1-3"}
            first_run = resp.headers["X-Run-ID"]
        assert api.provider.checkpointer.pending() > 0  # still on its way
        async with http.post(f"{api.url}/pay", json={"amount": 3}, headers=headers) as resp:
            assert resp.status == 200 and await resp.json() == {"charge": "ch-1-3"}
            assert resp.headers["X-Run-ID"] == first_run
        assert calls["charge"] == 1
    finally:
        await proxy.stop()


async def test_concurrent_requests_with_one_idempotency_key_run_once(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_charge() -> str:
        calls["charge"] += 1
        entered.set()
        await release.wait()
        return "ch-slow"

    @endpoints.durable(id="slow-charge")
    async def pay(request: web.Request, step: Any) -> web.Response:
        return web.json_response({"charge": await step.run("charge", slow_charge)}, status=201)

    api = await api_factory(server.url, lambda app: app.router.add_post("/pay", pay))

    async def request() -> tuple[int, Any, str]:
        async with http.post(f"{api.url}/pay", headers={"Idempotency-Key": "same"}) as resp:
            return resp.status, await resp.json(), resp.headers["X-Run-ID"]

    first = asyncio.create_task(request())
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.sleep(0.2)  # the first request's run checkpoint reaches the server
    second = asyncio.create_task(request())
    await asyncio.sleep(0.3)
    assert not second.done()  # it waits for the first request's answer
    release.set()
    one, two = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert one == two == (201, {"charge": "ch-slow"}, one[2])
    assert calls["charge"] == 1


async def test_simultaneous_duplicates_run_once(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    """A client retrying at once: the duplicate arrives before the first request's run exists anywhere."""
    calls: Counter[str] = Counter()

    async def charge() -> str:
        calls["charge"] += 1
        await asyncio.sleep(0.2)
        return "ch-once"

    @endpoints.durable(id="simultaneous")
    async def pay(request: web.Request, step: Any) -> web.Response:
        return web.json_response({"charge": await step.run("charge", charge)}, status=201)

    api = await api_factory(server.url, lambda app: app.router.add_post("/pay", pay))

    async def request() -> tuple[int, Any, str]:
        async with http.post(f"{api.url}/pay", headers={"Idempotency-Key": "dup"}) as resp:
            return resp.status, await resp.json(), resp.headers["X-Run-ID"]

    results = await asyncio.wait_for(asyncio.gather(*(request() for _ in range(3))), 10)
    assert {r[:2] == (201, {"charge": "ch-once"}) for r in results} == {True}
    assert len({r[2] for r in results}) == 1
    assert calls["charge"] == 1
