"""Durable API endpoints under ASGI (issue 7): `app.add_middleware(provider.asgi)` on a Starlette app served
by uvicorn on 127.0.0.1, talking to a real in-process stepflow server. Nothing of stepflow's is mocked."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import uvicorn
from conftest import RunningServer, ServerFactory, free_port
from endpoints_support import FAST, Api, ApiFactory, http, server  # noqa: F401 - shared fixtures
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepflow import codec, endpoints
from stepflow.endpoints.core import Provider
from stepflow.engine import EngineConfig
from stepflow.ids import new_ulid
from stepflow.protocol import signing
from stepflow.server import ServerSettings


@pytest.fixture
async def asgi_factory() -> AsyncIterator[ApiFactory]:
    """Start Starlette apps under uvicorn behind the durable-endpoints ASGI middleware."""
    started: list[tuple[uvicorn.Server, asyncio.Task[None], Provider]] = []

    async def start(base_url: str, routes: list[Route], **options: Any) -> Api:
        port = free_port()
        options.setdefault("dev", True)
        provider = endpoints.setup(domain=f"http://127.0.0.1:{port}", base_url=base_url, **options)
        app = Starlette(routes=routes)
        app.add_middleware(provider.asgi)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off"))
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 5
        while not server.started:
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        started.append((server, task, provider))
        return Api(url=f"http://127.0.0.1:{port}", provider=provider)

    yield start
    for uvicorn_server, task, provider in reversed(started):
        await provider.close()
        uvicorn_server.should_exit = True
        await asyncio.wait_for(task, 5)


def checkout_route(calls: Counter[str], sleep: str = "300ms", **options: Any) -> Route:
    @endpoints.durable(id="checkout-asgi", **options)
    async def checkout(request: Request, step: Any) -> Response:
        calls["handler"] += 1
        order = await step.run("order", request.json)

        def charge() -> dict[str, Any]:
            calls["charge"] += 1
            return {"id": "ch", "amount": order["amount"]}

        charged = await step.run("charge", charge)
        await step.sleep("settle", sleep)

        def receipt() -> dict[str, Any]:
            calls["receipt"] += 1
            return {"receipt": "r-" + charged["id"], "amount": charged["amount"]}

        done = await step.run("receipt", receipt)
        return JSONResponse(done, status_code=201, headers={"X-Receipt": done["receipt"]})

    return Route("/checkout", checkout, methods=["POST"])


async def test_sync_handler_under_starlette(server: RunningServer, asgi_factory: ApiFactory,
                                            http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    @endpoints.durable()
    async def create(request: Request, step: Any) -> Response:
        order = await step.run("order", request.json)
        total = await step.run("price", lambda: calls.update(["price"]) or order["qty"] * 5)
        reservation = await step.run("reserve", lambda: calls.update(["reserve"]) or f"res-{order['sku']}")
        return JSONResponse({"total": total, "reservation": reservation}, status_code=201,
                            headers={"X-Custom": "yes"})

    api = await asgi_factory(server.url, [Route("/orders", create, methods=["POST"])])
    sent = json.dumps({"sku": "B2", "qty": 2})
    started = time.perf_counter()
    async with http.post(f"{api.url}/orders?src=asgi", data=sent,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 201
        assert await resp.json() == {"total": 10, "reservation": "res-B2"}
        assert resp.headers["X-Custom"] == "yes"
        run_id = resp.headers["X-Run-ID"]
    assert time.perf_counter() - started < 2.0
    assert calls == {"price": 1, "reserve": 1}

    assert await api.provider.wait(10)
    run = await server.client.get_run(run_id)
    assert run["status"] == "Completed"
    assert run["function_id"] == "POST-orders"
    output = run["output"]
    assert set(output) == {"status_code", "headers", "body", "duration_ms"}
    assert output["status_code"] == 201 and output["headers"]["x-custom"] == "yes"
    assert json.loads(output["body"]) == {"total": 10, "reservation": "res-B2"}
    steps = await server.client.get_run_steps(run_id)
    assert [(s["step_id"], s["status"], s["output"]) for s in steps] == [
        ("order", "completed", {"sku": "B2", "qty": 2}), ("price", "completed", 10),
        ("reserve", "completed", "res-B2")]
    event = await server.client.get_event(run["event_id"])
    assert event["data"] == {"fn": "POST /orders", "method": "POST", "path": "/orders",
                             "domain": api.url.removeprefix("http://"), "ip": "127.0.0.1",
                             "content_type": "application/json", "query_params": "src=asgi", "body": sent}


async def test_omit_bodies_under_starlette(server: RunningServer, asgi_factory: ApiFactory,
                                           http: aiohttp.ClientSession) -> None:
    @endpoints.durable(id="pay-asgi", omit_request_body=True, omit_response_body=True)
    async def pay(request: Request, step: Any) -> Response:
        order = await step.run("order", request.json)
        if order["amount"] <= 0:
            endpoints.update_omit_response_body(False)
            return JSONResponse({"error": "amount must be positive"}, status_code=422)
        return JSONResponse({"paid": order["amount"]})

    api = await asgi_factory(server.url, [Route("/pay", pay, methods=["POST"])])
    async with http.post(f"{api.url}/pay", json={"amount": 4}) as resp:
        assert await resp.json() == {"paid": 4}
        ok_run = resp.headers["X-Run-ID"]
    async with http.post(f"{api.url}/pay", json={"amount": -1}) as resp:
        assert resp.status == 422
        refused_run = resp.headers["X-Run-ID"]
    assert await api.provider.wait(10)
    ok = await server.client.get_run(ok_run)
    assert ok["output"]["status_code"] == 200 and "body" not in ok["output"]
    assert "body" not in (await server.client.get_event(ok_run))["data"]
    refused = (await server.client.get_run(refused_run))["output"]
    assert json.loads(refused["body"]) == {"error": "amount must be positive"}


async def test_async_redirect_under_starlette(server: RunningServer, asgi_factory: ApiFactory,
                                              http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()
    api = await asgi_factory(server.url, [checkout_route(calls)])
    started = time.perf_counter()
    async with http.post(f"{api.url}/checkout", json={"amount": 7}, allow_redirects=False) as resp:
        assert resp.status == 303
        run_id = resp.headers["X-Run-ID"]
        location = resp.headers["Location"]
    assert time.perf_counter() - started < 0.3
    assert location.startswith(f"{server.url}/v1/runs/{run_id}/output?token=")
    assert calls == {"handler": 1, "charge": 1}

    async with http.post(f"{api.url}/checkout", json={"amount": 8}) as resp:  # a client that follows
        assert resp.status == 201
        assert await resp.json() == {"receipt": "r-ch", "amount": 8}
        assert resp.headers["X-Receipt"] == "r-ch"
        assert [r.status for r in resp.history] == [303]
        followed_run = resp.history[0].headers["X-Run-ID"]
        assert resp.headers["X-Run-ID"] == followed_run
    async with http.get(location) as final:
        assert final.status == 201 and await final.json() == {"receipt": "r-ch", "amount": 7}
    assert calls == {"handler": 4, "charge": 2, "receipt": 2}  # every step once per request

    for rid in (run_id, followed_run):
        run = await server.client.get_run(rid)
        assert run["status"] == "Completed" and run["output"]["status_code"] == 201
        steps = await server.client.get_run_steps(rid)
        assert [(s["step_id"], s["status"]) for s in steps] == [
            ("order", "completed"), ("charge", "completed"), ("settle", "completed"), ("receipt", "completed")]


async def test_token_and_custom_async_responses_under_starlette(
        server: RunningServer, asgi_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()
    seen: list[str] = []

    def custom(request: Request, run_id: str, token: str) -> Response:
        seen.append(request.url.path)
        return JSONResponse({"accepted": run_id}, status_code=202, headers={"X-Custom-Async": "1"})

    @endpoints.durable(id="export-asgi", async_response=custom)
    async def export(request: Request, step: Any) -> Response:
        rows = await step.run("rows", lambda: [1, 2, 3])
        await step.sleep("wait", "100ms")
        return JSONResponse({"rows": len(rows)})

    api = await asgi_factory(server.url, [checkout_route(calls, sleep="100ms"),
                                          Route("/export", export, methods=["POST"])], async_response="token")
    async with http.post(f"{api.url}/checkout", json={"amount": 2}) as resp:
        assert resp.status == 202
        body = await resp.json()
        assert set(body) == {"run_id", "token", "url"} and body["run_id"] == resp.headers["X-Run-ID"]
    async with http.get(body["url"]) as final:
        assert final.status == 201 and await final.json() == {"receipt": "r-ch", "amount": 2}

    async with http.post(f"{api.url}/export") as resp:
        assert resp.status == 202 and resp.headers["X-Custom-Async"] == "1"
        assert (await resp.json())["accepted"]
    assert seen == ["/export"]


async def test_idempotency_key_under_starlette(server: RunningServer, asgi_factory: ApiFactory,
                                               http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    @endpoints.durable(id="charge-asgi")
    async def pay(request: Request, step: Any) -> Response:
        charge = await step.run("charge", lambda: calls.update(["charge"]) or f"ch-{calls['charge']}")
        return JSONResponse({"charge": charge}, status_code=201)

    api = await asgi_factory(server.url, [Route("/pay", pay, methods=["POST"])])
    runs = []
    for _ in range(3):
        async with http.post(f"{api.url}/pay", headers={"Idempotency-Key": "a-1"}) as resp:
            assert resp.status == 201 and await resp.json() == {"charge": "ch-1"}
            runs.append(resp.headers["X-Run-ID"])
    assert len(set(runs)) == 1
    assert calls["charge"] == 1
    async with http.post(f"{api.url}/pay", headers={"Idempotency-Key": "a-2"}) as resp:
        assert await resp.json() == {"charge": "ch-2"}


async def test_signed_resume_under_starlette(stepflow_factory: ServerFactory, asgi_factory: ApiFactory,
                                             http: aiohttp.ClientSession) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["k"], event_keys=["e"], dev=False),
                                    config=EngineConfig(backoff_base=0.01, backoff_max=0.2, poll_interval=0.1,
                                                        signing_key="k"))
    calls: Counter[str] = Counter()
    api = await asgi_factory(server.url, [checkout_route(calls)], signing_key="k", dev=False)
    async with http.post(f"{api.url}/checkout", json={"amount": 9}) as resp:
        assert resp.status == 201 and await resp.json() == {"receipt": "r-ch", "amount": 9}
    assert calls == {"handler": 2, "charge": 1, "receipt": 1}

    document = {"event": {"name": "http/request", "data": {"fn": "checkout-asgi", "method": "POST",
                                                           "path": "/checkout", "body": '{"amount": 1}'}},
                "steps": {}, "ctx": {"run_id": new_ulid(), "function_id": "checkout-asgi", "attempt": 0}}
    body = codec.dumps(document)
    for signature in [None, signing.sign(body, "wrong"), signing.sign(body + b"x", "k"), "t=\u00b2&s=00"]:
        headers = {"X-Stepflow-Resume": "1", "Content-Type": "application/json"}
        if signature:
            headers[signing.SIGNATURE_HEADER] = signature
        async with http.post(f"{api.url}/checkout", data=body, headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
    # correctly signed, but not an Input: a clean 400 that the engine does not retry
    for bad in (b"not json", codec.dumps({"event": {"data": {"method": 5}}})):
        headers = {"X-Stepflow-Resume": "1", "Content-Type": "application/json",
                   signing.SIGNATURE_HEADER: signing.sign(bad, "k")}
        async with http.post(f"{api.url}/checkout", data=bad, headers=headers) as resp:
            assert resp.status == 400 and resp.headers["x-inngest-no-retry"] == "true"
            assert (await resp.json())["name"] == "InvalidResume"
    assert calls == {"handler": 2, "charge": 1, "receipt": 1}


async def test_http_exceptions_and_identifiers_under_starlette(
        server: RunningServer, asgi_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    @endpoints.durable(id="find-asgi")
    async def find(request: Request, step: Any) -> Response:
        found = await step.run("lookup", lambda: None)
        if found is None:
            raise HTTPException(404, "no such order")
        return JSONResponse(found)

    @endpoints.durable()
    async def user(request: Request, step: Any) -> Response:
        calls["user"] += 1
        return JSONResponse({"id": request.path_params["user_id"]})

    api = await asgi_factory(server.url, [Route("/find", find), Route("/users/{user_id}", user)])
    async with http.get(f"{api.url}/find") as resp:
        assert resp.status == 404 and await resp.text() == "no such order"
        run_id = resp.headers["X-Run-ID"]
    assert await api.provider.wait(10)
    run = await server.client.get_run(run_id)
    assert run["status"] == "Completed"
    assert run["output"]["status_code"] == 404 and run["output"]["body"] == "no such order"

    async with http.get(f"{api.url}/users/5") as resp:
        assert resp.status == 500  # refused: a path with identifiers needs an id
    assert calls["user"] == 0


async def test_hooks_and_track_all_endpoints_under_starlette(server: RunningServer, asgi_factory: ApiFactory,
                                                            http: aiohttp.ClientSession) -> None:
    seen: list[tuple[str, Any]] = []

    async def plain(request: Request) -> Response:
        return JSONResponse({"item": request.path_params["item_id"]})

    api = await asgi_factory(server.url, [Route("/items/{item_id}", plain, methods=["GET"])],
                             track_all_endpoints=True,
                             before=[lambda request: seen.append(("before", request.url.path))],
                             after=[lambda request, response: seen.append(("after", response.status_code))])
    async with http.get(f"{api.url}/items/7") as resp:
        assert resp.status == 200 and await resp.json() == {"item": "7"}
        run_id = resp.headers["X-Run-ID"]
    async with http.get(f"{api.url}/nowhere") as resp:
        assert resp.status == 404 and "X-Run-ID" not in resp.headers  # unmatched paths are not endpoints
    assert seen == [("before", "/items/7"), ("after", 200), ("before", "/nowhere"), ("after", 404)]
    assert await api.provider.wait(10)
    run = await server.client.get_run(run_id)
    assert run["status"] == "Completed" and run["output"]["status_code"] == 200
    assert json.loads(run["output"]["body"]) == {"item": "7"}
    assert run["function_id"] == "GET-items-item_id"  # the route pattern, not one function per item
