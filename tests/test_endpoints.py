"""Durable API endpoints under aiohttp (issue 7, items 1-4): steps inside ordinary HTTP handlers, checkpointed
in the background, turning asynchronous when they must wait.

Everything is real: a stepflow server on 127.0.0.1 (in this process, with its engine and a SQLite file) and
an aiohttp API on its own port with `provider.aiohttp_middleware`; the engine resumes async runs by calling
that API over HTTP. Nothing of stepflow's is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningServer, ServerFactory
from endpoints_support import (  # noqa: F401 - fixtures are found by name
    ApiFactory,
    api_factory,
    checkout_routes,
    http,
    server,
    stored_run,
)

from stepflow import NonRetriableError, codec, endpoints
from stepflow.engine import EngineConfig
from stepflow.errors import ConfigError
from stepflow.ids import new_ulid
from stepflow.protocol import signing
from stepflow.server import ServerSettings, routes_endpoints
from stepflow.tokens import make_token

# --- the sync path --------------------------------------------------------------------------------------


async def test_sync_handler_runs_its_steps_inline_and_becomes_a_run(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    def price(order: dict[str, Any]) -> int:
        calls["price"] += 1
        return int(order["qty"]) * 5

    async def reserve(order: dict[str, Any]) -> str:
        calls["reserve"] += 1
        return f"res-{order['sku']}"

    @endpoints.durable()  # default id: "POST /orders"
    async def create_order(request: web.Request, step: Any) -> web.Response:
        order = await step.run("order", request.json)
        total = await step.run("price", price, order)
        reservation = await step.run("reserve", reserve, order)
        return web.json_response({"total": total, "reservation": reservation}, status=201,
                                 headers={"X-Custom": "yes"})

    api = await api_factory(server.url, lambda app: app.router.add_post("/orders", create_order))
    sent = json.dumps({"sku": "A1", "qty": 3})
    started = time.perf_counter()
    async with http.post(f"{api.url}/orders?src=web&x=1", data=sent,
                         headers={"Content-Type": "application/json"}) as resp:
        elapsed = time.perf_counter() - started
        assert resp.status == 201
        assert await resp.json() == {"total": 15, "reservation": "res-A1"}
        assert resp.headers["X-Custom"] == "yes"
        run_id = resp.headers["X-Run-ID"]
        assert not resp.history  # answered inline, no redirect
    assert elapsed < 2.0
    assert calls == {"price": 1, "reserve": 1}

    run = await stored_run(server, api, run_id)
    assert run["status"] == "Completed"
    assert run["function_id"] == "POST-orders"  # "POST /orders", made URL-safe
    output = run["output"]
    assert set(output) == {"status_code", "headers", "body", "duration_ms"}
    assert output["status_code"] == 201
    assert output["headers"]["X-Custom"] == "yes"
    assert output["headers"]["Content-Type"].startswith("application/json")
    assert json.loads(output["body"]) == {"total": 15, "reservation": "res-A1"}
    assert isinstance(output["duration_ms"], int) and 0 <= output["duration_ms"] < 2000

    steps = await server.client.get_run_steps(run_id)
    assert [(s["step_id"], s["status"], s["output"]) for s in steps] == [
        ("order", "completed", {"sku": "A1", "qty": 3}),
        ("price", "completed", 15),
        ("reserve", "completed", "res-A1"),
    ]

    event = await server.client.get_event(run["event_id"])
    assert event["name"] == "http/request"
    host = api.url.removeprefix("http://")
    assert event["data"] == {"fn": "POST /orders", "method": "POST", "path": "/orders", "domain": host,
                             "ip": "127.0.0.1", "content_type": "application/json",
                             "query_params": "src=web&x=1", "body": sent}


async def test_omitted_request_and_response_bodies(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    @endpoints.durable(id="login", omit_request_body=True, omit_response_body=True)
    async def login(request: web.Request, step: Any) -> web.Response:
        creds = await step.run("creds", request.json)
        return web.json_response({"session": f"s-{creds['user']}"})

    @endpoints.durable(id="pay", omit_response_body=True)
    async def pay(request: web.Request, step: Any) -> web.Response:
        order = await step.run("order", request.json)
        if order["amount"] <= 0:
            endpoints.update_omit_response_body(False)  # keep the body, for errors only
            return web.json_response({"error": "amount must be positive"}, status=422)
        return web.json_response({"paid": order["amount"], "card": "4242"})

    def routes(app: web.Application) -> None:
        app.router.add_post("/login", login)
        app.router.add_post("/pay", pay)

    api = await api_factory(server.url, routes)
    async with http.post(f"{api.url}/login", json={"user": "ann", "password": "hunter2"}) as resp:
        assert resp.status == 200 and await resp.json() == {"session": "s-ann"}  # the caller still gets it
        login_run = resp.headers["X-Run-ID"]
    async with http.post(f"{api.url}/pay", json={"amount": 12}) as resp:
        assert resp.status == 200 and await resp.json() == {"paid": 12, "card": "4242"}
        paid_run = resp.headers["X-Run-ID"]
    async with http.post(f"{api.url}/pay", json={"amount": 0}) as resp:
        assert resp.status == 422
        refused_run = resp.headers["X-Run-ID"]

    run = await stored_run(server, api, login_run)
    assert run["status"] == "Completed"
    assert run["output"]["status_code"] == 200 and "body" not in run["output"]
    event = await server.client.get_event(run["event_id"])
    assert "body" not in event["data"] and "hunter2" not in json.dumps(event)
    assert event["data"]["method"] == "POST" and event["data"]["fn"] == "login"

    paid = (await server.client.get_run(paid_run))["output"]
    assert paid["status_code"] == 200 and "body" not in paid and "4242" not in json.dumps(paid)
    refused = (await server.client.get_run(refused_run))["output"]
    assert refused["status_code"] == 422
    assert json.loads(refused["body"]) == {"error": "amount must be positive"}
    # the request body was kept for /pay (only the response body is omitted)
    assert json.loads((await server.client.get_event(paid_run))["data"]["body"]) == {"amount": 12}


async def test_function_ids_and_paths_with_identifiers(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    calls: Counter[str] = Counter()

    @endpoints.durable()
    async def get_user(request: web.Request, step: Any) -> web.Response:
        calls["anonymous"] += 1
        return web.json_response(await step.run("load", lambda: {"id": request.match_info["user_id"]}))

    @endpoints.durable(id="get-account")
    async def get_account(request: web.Request, step: Any) -> web.Response:
        return web.json_response(await step.run("load", lambda: {"id": request.match_info["account_id"]}))

    @endpoints.durable()
    async def status(request: web.Request, step: Any) -> web.Response:
        return web.json_response({"ok": await step.run("check", lambda: True)})

    def routes(app: web.Application) -> None:
        app.router.add_get("/users/{user_id}", get_user)
        app.router.add_get("/accounts/{account_id}", get_account)
        app.router.add_get("/status", status)

    api = await api_factory(server.url, routes)
    with caplog.at_level(logging.ERROR):
        async with http.get(f"{api.url}/users/42") as resp:
            assert resp.status == 500
            text = await resp.text()
    # refused before the handler runs, naming the route and the remedy
    assert calls["anonymous"] == 0
    explained = text + caplog.text
    assert "/users/{user_id}" in explained and "has identifiers in its path" in explained and "id=" in explained

    async with http.get(f"{api.url}/accounts/7") as resp:
        assert resp.status == 200 and await resp.json() == {"id": "7"}
        account_run = resp.headers["X-Run-ID"]
    async with http.get(f"{api.url}/status") as resp:
        assert resp.status == 200
        status_run = resp.headers["X-Run-ID"]
    assert (await stored_run(server, api, account_run))["function_id"] == "get-account"
    run = await server.client.get_run(status_run)
    assert run["function_id"] == "GET-status"
    assert (await server.client.get_event(run["event_id"]))["data"]["fn"] == "GET /status"


async def test_sleep_redirects_to_the_output_url_which_replays_the_final_response(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()
    api = await api_factory(server.url, checkout_routes(calls))

    started = time.perf_counter()
    async with http.post(f"{api.url}/checkout", json={"amount": 42}, allow_redirects=False) as resp:
        assert resp.status == 303
        run_id = resp.headers["X-Run-ID"]
        location = resp.headers["Location"]
    assert time.perf_counter() - started < 0.3  # answered at the sleep, not after it
    assert location.startswith(f"{server.url}/v1/runs/{run_id}/output?token=")
    assert calls == {"handler": 1, "charge": 1}

    async with http.get(location) as final:  # blocks until the run ends
        assert final.status == 201
        assert await final.json() == {"receipt": "r-ch_1", "amount": 42}
        assert final.headers["X-Receipt"] == "r-ch_1"
        assert final.headers["Content-Type"].startswith("application/json")
        assert final.headers["X-Run-ID"] == run_id
    assert calls["charge"] == 1 and calls["receipt"] == 1  # each step's callable ran exactly once
    assert calls["handler"] == 2  # the request, then the engine's resume after the sleep

    run = await server.client.get_run(run_id)
    assert run["status"] == "Completed"
    assert run["output"]["status_code"] == 201
    assert json.loads(run["output"]["body"]) == {"receipt": "r-ch_1", "amount": 42}
    assert 300 <= run["output"]["duration_ms"] < 5000  # from the request to the final response, sleep included
    steps = await server.client.get_run_steps(run_id)
    assert [(s["step_id"], s["status"]) for s in steps] == [
        ("order", "completed"), ("charge", "completed"), ("settle", "completed"), ("receipt", "completed")]
    assert [s["output"] for s in steps if s["step_id"] != "settle"] == [
        {"amount": 42}, {"charge_id": "ch_1", "amount": 42}, {"receipt": "r-ch_1", "amount": 42}]


async def test_a_client_following_the_redirect_gets_the_final_response(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()
    api = await api_factory(server.url, checkout_routes(calls))
    async with http.post(f"{api.url}/checkout", json={"amount": 7}) as resp:
        assert resp.status == 201
        assert await resp.json() == {"receipt": "r-ch_1", "amount": 7}
        assert [r.status for r in resp.history] == [303]
        run_id = resp.history[0].headers["X-Run-ID"]
        assert resp.headers["X-Run-ID"] == run_id
    assert calls == {"handler": 2, "charge": 1, "receipt": 1}
    assert len(await server.client.get_run_steps(run_id)) == 4


async def test_token_and_custom_async_responses(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()
    seen: list[tuple[str, str, str]] = []

    def custom(request: web.Request, run_id: str, token: str) -> web.Response:
        seen.append((request.path, run_id, token))
        return web.json_response({"accepted": run_id, "poll": f"/status/{run_id}"}, status=202,
                                 headers={"X-Custom-Async": "1"})

    @endpoints.durable(id="export", async_response=custom)
    async def export(request: web.Request, step: Any) -> web.Response:
        rows = await step.run("rows", lambda: [1, 2, 3])
        await step.sleep("wait", "200ms")
        return web.json_response({"rows": len(rows)})

    def routes(app: web.Application) -> None:
        checkout_routes(calls)(app)
        app.router.add_post("/export", export)

    api = await api_factory(server.url, routes, async_response="token")  # the provider's default
    async with http.post(f"{api.url}/checkout", json={"amount": 5}) as resp:
        assert resp.status == 202
        body = await resp.json()
        assert set(body) == {"run_id", "token", "url"}
        assert body["run_id"] == resp.headers["X-Run-ID"]
        assert body["url"] == f"{server.url}/v1/runs/{body['run_id']}/output?token={body['token']}"
    async with http.get(body["url"]) as final:
        assert final.status == 201 and await final.json() == {"receipt": "r-ch_1", "amount": 5}

    async with http.post(f"{api.url}/export", allow_redirects=False) as resp:
        assert resp.status == 202
        assert resp.headers["X-Custom-Async"] == "1"
        run_id = resp.headers["X-Run-ID"]
        assert await resp.json() == {"accepted": run_id, "poll": f"/status/{run_id}"}
    assert len(seen) == 1 and seen[0][:2] == ("/export", run_id)
    async with http.get(api.provider.output_url(run_id, seen[0][2])) as final:
        assert final.status == 200 and await final.json() == {"rows": 3}


async def test_output_url_tokens_are_run_scoped_and_expire(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()
    api = await api_factory(server.url, checkout_routes(calls, sleep="100ms"), async_response="token")
    async with http.post(f"{api.url}/checkout", json={"amount": 1}) as resp:
        run_id = (await resp.json())["run_id"]
    output = f"{server.url}/v1/runs/{run_id}/output"
    other_run = new_ulid()
    for token, reason in [("", "malformed"), ("garbage", "malformed"),
                          (f"{int(time.time()) + 100}.abc", "not valid for this run"),
                          (make_token(other_run, None), "not valid for this run"),
                          (make_token(run_id, "another-key"), "not valid for this run"),
                          (make_token(run_id, None, ttl=-5), "expired")]:
        async with http.get(output, params={"token": token}) as resp:
            assert resp.status == 401, token
            assert reason in (await resp.json())["error"]["message"]
    async with http.get(output, params={"token": make_token(run_id, None, ttl=60)}) as resp:
        assert resp.status == 201 and await resp.json() == {"receipt": "r-ch_1", "amount": 1}


async def test_output_url_says_still_running_after_its_wait_limit(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_endpoints, "OUTPUT_WAIT_LIMIT", 0.5)
    calls: Counter[str] = Counter()
    api = await api_factory(server.url, checkout_routes(calls, sleep="1h"))
    started = time.perf_counter()
    async with http.post(f"{api.url}/checkout", json={"amount": 3}) as resp:
        elapsed = time.perf_counter() - started
        assert resp.status == 202
        assert [r.status for r in resp.history] == [303]
        body = await resp.json()
        run_id = resp.history[0].headers["X-Run-ID"]
        assert resp.headers["X-Run-ID"] == run_id
        assert resp.headers["Retry-After"] == "1"
    assert 0.4 < elapsed < 5
    assert body["run_id"] == run_id
    assert body["status"] in ("Running", "Sleeping")
    assert "still running" in body["message"]
    assert calls == {"handler": 1, "charge": 1}


async def test_a_failing_step_hands_the_run_to_the_engine_and_the_answer_follows_the_retry(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    def flaky(order: dict[str, Any]) -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("the bank timed out")
        return f"paid-{order['amount']}"

    @endpoints.durable(id="flaky-pay")
    async def pay(request: web.Request, step: Any) -> web.Response:
        order = await step.run("order", request.json)
        paid = await step.run("pay", flaky, order)
        note = await step.run("note", lambda: calls.update(["note"]) or f"noted {paid}")
        return web.json_response({"paid": paid, "note": note})

    api = await api_factory(server.url, lambda app: app.router.add_post("/pay", pay))
    async with http.post(f"{api.url}/pay", json={"amount": 9}, allow_redirects=False) as resp:
        assert resp.status == 303  # the step failed: the run is the engine's now
        run_id = resp.headers["X-Run-ID"]
        location = resp.headers["Location"]
    assert calls == {"flaky": 1}
    async with http.get(location) as final:
        assert final.status == 200
        assert await final.json() == {"paid": "paid-9", "note": "noted paid-9"}
    assert calls == {"flaky": 2, "note": 1}
    steps = {s["step_id"]: s for s in await server.client.get_run_steps(run_id)}
    assert list(steps) == ["order", "pay", "note"]
    assert all(s["status"] == "completed" for s in steps.values())
    assert steps["pay"]["output"] == "paid-9"
    assert (await server.client.get_run(run_id))["status"] == "Completed"


async def test_a_step_that_fails_for_good_ends_the_run_and_the_output_url_says_so(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    def decline() -> None:
        calls["decline"] += 1
        raise NonRetriableError("card declined")

    @endpoints.durable(id="declined")
    async def pay(request: web.Request, step: Any) -> web.Response:
        await step.run("charge", decline)
        return web.json_response({"paid": True})  # pragma: no cover - never reached

    api = await api_factory(server.url, lambda app: app.router.add_post("/pay", pay))
    async with http.post(f"{api.url}/pay") as resp:
        assert resp.status == 500
        body = await resp.json()
        assert [r.status for r in resp.history] == [303]
        run_id = resp.headers["X-Run-ID"]
    assert body["run_id"] == run_id and body["error"]["code"] == "run_failed"
    assert calls["decline"] == 1  # not retried
    run = await server.client.get_run(run_id)
    assert run["status"] == "Failed"
    steps = await server.client.get_run_steps(run_id)
    assert [(s["step_id"], s["status"]) for s in steps] == [("charge", "failed")]
    assert "card declined" in json.dumps(steps[0]["error"])


async def test_wait_for_event_in_a_durable_handler(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    @endpoints.durable(id="approve-order", async_response="token")
    async def approve(request: web.Request, step: Any) -> web.Response:
        order = await step.run("order", request.json)
        approval = await step.wait_for_event("approval", event="order/approved", timeout="30s",
                                             if_=f"async.data.order_id == '{order['id']}'")
        if approval is None:
            return web.json_response({"error": "not approved in time"}, status=408)

        def ship() -> str:
            calls["ship"] += 1
            return f"shipped-{order['id']}"

        shipment = await step.run("ship", ship)
        return web.json_response({"shipment": shipment, "approved_by": approval.data["by"]})

    api = await api_factory(server.url, lambda app: app.router.add_post("/orders/approve", approve))
    async with http.post(f"{api.url}/orders/approve", json={"id": "o-1"}) as resp:
        assert resp.status == 202
        pending = await resp.json()
    assert calls["ship"] == 0

    async def follow() -> tuple[int, Any]:
        async with http.get(pending["url"]) as final:  # blocks until the run ends
            return final.status, await final.json()

    waiting = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    assert not waiting.done()  # the run waits for the event
    await server.client.send([{"name": "order/approved", "data": {"order_id": "o-2", "by": "nobody"}},
                              {"name": "order/approved", "data": {"order_id": "o-1", "by": "ann"}}])
    assert await asyncio.wait_for(waiting, 10) == (200, {"shipment": "shipped-o-1", "approved_by": "ann"})
    assert calls["ship"] == 1
    steps = await server.client.get_run_steps(pending["run_id"])
    assert [(s["step_id"], s["status"]) for s in steps] == [
        ("order", "completed"), ("approval", "completed"), ("ship", "completed")]


async def test_send_event_in_a_durable_handler_keeps_the_request_synchronous(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    """Nothing waits on a sent event: the request answers inline (no 303), the event is stored once and starts
    the functions it triggers, and the step records its ids."""
    await server.register({"id": "on-order-placed", "triggers": [{"event": "order/placed"}],
                           "steps": {"note": {"runtime": {"type": "inprocess", "handler": "json:dumps"}}}})

    @endpoints.durable(id="place-order")
    async def place(request: web.Request, step: Any) -> web.Response:
        order = await step.run("order", request.json)
        ids = await step.send_event("announce", {"name": "order/placed", "data": {"order": order["id"]}})
        return web.json_response({"order": order["id"], "event_ids": ids})

    api = await api_factory(server.url, lambda app: app.router.add_post("/orders/place", place))
    async with http.post(f"{api.url}/orders/place", json={"id": "o-9"}, allow_redirects=False) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        run_id = resp.headers["X-Run-ID"]
    [event_id] = body["event_ids"]
    assert body["order"] == "o-9" and event_id.startswith(run_id)
    event = await server.client._request("GET", f"/v1/events/{event_id}")
    assert event["data"]["name"] == "order/placed" and event["data"]["data"] == {"order": "o-9"}
    [triggered] = await server.client.get_event_runs(event_id)
    assert triggered["function_id"] == "on-order-placed"
    assert (await server.client.wait_for_run(triggered["run_id"], timeout=10))["status"] == "Completed"
    run = await stored_run(server, api, run_id)
    assert run["status"] == "Completed"
    steps = await server.client.get_run_steps(run_id)
    assert [(s["step_id"], s["status"]) for s in steps] == [("order", "completed"), ("announce", "completed")]
    assert steps[1]["output"] == {"ids": [event_id]}


# --- a handler that raises ------------------------------------------------------------------------------


async def test_a_handler_that_raises_answers_500_and_the_run_records_it(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    calls: Counter[str] = Counter()

    @endpoints.durable(id="broken-early")
    async def early(request: web.Request, step: Any) -> web.Response:
        raise ValueError("secret-detail early")

    @endpoints.durable(id="broken-late")
    async def late(request: web.Request, step: Any) -> web.Response:
        await step.run("load", lambda: calls.update(["load"]) or 1)
        raise ValueError("secret-detail late")

    def routes(app: web.Application) -> None:
        app.router.add_get("/early", early)
        app.router.add_get("/late", late)

    api = await api_factory(server.url, routes)
    for path in ("early", "late"):
        started = time.perf_counter()
        async with http.get(f"{api.url}/{path}", allow_redirects=False) as resp:
            assert resp.status == 500, path
            body = await resp.json()
            run_id = resp.headers["X-Run-ID"]
        assert time.perf_counter() - started < 1.0
        assert body["run_id"] == run_id
        assert body["error"]["code"] == "internal_error"
        assert "Traceback" not in json.dumps(body) and "secret-detail" not in json.dumps(body)  # not for callers
        run = await stored_run(server, api, run_id)
        assert run["status"] == "Failed"  # the caller got a clean 500; the run says what happened
        assert run["error"]["code"] == "endpoint_error" and run["error"]["name"] == "ValueError"
        assert f"secret-detail {path}" in run["error"]["message"]
        assert run["output"]["status_code"] == 500
        assert run["output"]["error"]["name"] == "ValueError"
        assert f"secret-detail {path}" in run["output"]["error"]["message"]
    assert calls["load"] == 1
    failed = (await server.client.list_runs(status="Failed"))["data"]
    assert {r["function_id"] for r in failed} >= {"broken-early", "broken-late"}


# --- resume security ------------------------------------------------------------------------------------


async def test_signed_resume_calls_and_forged_ones(
        stepflow_factory: ServerFactory, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["k"], event_keys=["e"], dev=False),
                                    config=EngineConfig(backoff_base=0.01, backoff_max=0.2, poll_interval=0.1,
                                                        signing_key="k"))
    calls: Counter[str] = Counter()
    api = await api_factory(server.url, checkout_routes(calls), signing_key="k", dev=False)
    async with http.post(f"{api.url}/checkout", json={"amount": 11}) as resp:
        assert resp.status == 201
        assert await resp.json() == {"receipt": "r-ch_1", "amount": 11}
        run_id = resp.headers["X-Run-ID"]
    assert calls == {"handler": 2, "charge": 1, "receipt": 1}
    run = await server.client.get_run(run_id)  # the REST API needs the key: the client has it
    assert run["status"] == "Completed"
    # the output URL needs no key, only its token (made with the signing key)
    async with http.get(f"{server.url}/v1/runs/{run_id}/output",
                        params={"token": make_token(run_id, "k")}) as resp:
        assert resp.status == 201
    async with http.get(f"{server.url}/v1/runs/{run_id}/output",
                        params={"token": make_token(run_id, None)}) as resp:
        assert resp.status == 401  # the dev key is worthless here

    # a forged resume call: the steps it claims are memoized must not run anything
    document = {"event": {"name": "http/request", "data": {"fn": "checkout", "method": "POST", "path": "/checkout",
                                                           "body": json.dumps({"amount": 1000})}},
                "steps": {}, "ctx": {"run_id": new_ulid(), "function_id": "checkout", "attempt": 0}}
    body = codec.dumps(document)
    headers = {"X-Stepflow-Resume": "1", "Content-Type": "application/json"}
    for signature in [None, signing.sign(body, "wrong-key"), "t=1&s=00", signing.sign(body + b" ", "k"),
                      "t=\u00b2&s=00", f"t={int(time.time())}&s=\u00e9"]:
        sent = {**headers, signing.SIGNATURE_HEADER: signature} if signature else headers
        async with http.post(f"{api.url}/checkout", data=body, headers=sent) as resp:
            assert resp.status == 401, signature
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert calls == {"handler": 2, "charge": 1, "receipt": 1}
    # and the real key is accepted
    async with http.post(f"{api.url}/checkout", data=body,
                         headers={**headers, signing.SIGNATURE_HEADER: signing.sign(body, "k")}) as resp:
        assert resp.status == 206  # the SDK answer to the engine: the steps ran up to the sleep
        ops = await resp.json()
        assert [op["op"] for op in ops] == ["StepRun", "StepRun", "Sleep"]
    assert calls == {"handler": 3, "charge": 2, "receipt": 1}
    # a correctly signed call whose body is not an Input is refused cleanly, and runs nothing
    for bad in (b"not json", b"[1, 2]", codec.dumps({"event": {"data": {"body": 7}}})):
        async with http.post(f"{api.url}/checkout", data=bad,
                             headers={**headers, signing.SIGNATURE_HEADER: signing.sign(bad, "k")}) as resp:
            assert resp.status == 400 and resp.headers["X-Inngest-No-Retry"] == "true", bad
            assert (await resp.json())["name"] == "InvalidResume"
    assert calls == {"handler": 3, "charge": 2, "receipt": 1}
    # an output token whose expiry is not an ASCII number is refused as any bad token
    async with http.get(f"{server.url}/v1/runs/{run_id}/output", params={"token": "\u00b2\u00b2.abc"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"


async def test_outside_dev_mode_a_signing_key_is_required() -> None:
    with pytest.raises(ConfigError, match="signing key"):
        endpoints.setup(domain="api.example.com", base_url="http://127.0.0.1:1", dev=False)


# --- hooks and tracking every endpoint ------------------------------------------------------------------


async def test_hooks_and_track_all_endpoints(
        tmp_path: Path, server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    before: list[str] = []
    after: list[tuple[str, int, str]] = []

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text=f"plain {request.query.get('q', '')}", headers={"X-Plain": "1"})

    async def item(request: web.Request) -> web.Response:
        return web.json_response({"item": request.match_info["item_id"]})

    @endpoints.durable(id="durable-one")
    async def durable_one(request: web.Request, step: Any) -> web.Response:
        return web.json_response({"v": await step.run("v", lambda: 1)})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for n in (1, 2):
            await response.write(f"chunk {n}\n".encode())
        await response.write_eof()
        return response

    served = tmp_path / "served.txt"
    served.write_bytes(b"file contents")

    async def file(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(served)

    def routes(app: web.Application) -> None:
        app.router.add_get("/plain", plain)
        app.router.add_get("/file", file)
        app.router.add_get("/stream", stream)
        app.router.add_get("/items/{item_id}", item)
        app.router.add_get("/durable", durable_one)

    api = await api_factory(server.url, routes, track_all_endpoints=True,
                            before=[lambda request: before.append(request.path)],
                            after=[lambda request, response: after.append(
                                (request.path, response.status, response.headers.get("X-Run-ID", "")))])
    async with http.get(f"{api.url}/plain?q=hi") as resp:
        assert resp.status == 200 and await resp.text() == "plain hi"
        plain_run = resp.headers["X-Run-ID"]
    async with http.get(f"{api.url}/durable") as resp:
        assert resp.status == 200 and await resp.json() == {"v": 1}
        durable_run = resp.headers["X-Run-ID"]
    assert before == ["/plain", "/durable"]
    assert after == [("/plain", 200, plain_run), ("/durable", 200, durable_run)]

    run = await stored_run(server, api, plain_run)
    assert run["status"] == "Completed"
    assert run["function_id"] == "GET-plain"
    assert run["output"]["status_code"] == 200 and run["output"]["body"] == "plain hi"
    assert run["output"]["headers"]["X-Plain"] == "1"
    assert await server.client.get_run_steps(plain_run) == []
    assert (await server.client.get_event(plain_run))["data"]["query_params"] == "q=hi"

    # a plain handler on a path with identifiers is tracked under its route, not one function per id
    async with http.get(f"{api.url}/items/17") as resp:
        assert resp.status == 200 and await resp.json() == {"item": "17"}
        item_run = resp.headers["X-Run-ID"]
    assert (await stored_run(server, api, item_run))["function_id"] == "GET-items-item_id"
    # streamed answers (files, server-sent events) pass through untouched and are recorded without a body
    async with http.get(f"{api.url}/file") as resp:
        assert resp.status == 200 and await resp.read() == b"file contents"
        file_run = resp.headers["X-Run-ID"]
    async with http.get(f"{api.url}/stream") as resp:
        assert resp.status == 200 and await resp.read() == b"chunk 1\nchunk 2\n"
    run = await stored_run(server, api, file_run)
    assert run["status"] == "Completed" and run["output"]["status_code"] == 200
    assert "body" not in run["output"]
    # an unknown path is still a 404, and not a run
    async with http.get(f"{api.url}/nowhere") as resp:
        assert resp.status == 404
        assert "X-Run-ID" not in resp.headers


async def test_without_track_all_plain_handlers_are_untouched(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    hooked: list[str] = []

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    api = await api_factory(server.url, lambda app: app.router.add_get("/plain", plain),
                            before=[lambda request: hooked.append(request.path)])
    async with http.get(f"{api.url}/plain") as resp:
        assert resp.status == 200 and await resp.text() == "plain"
        assert "X-Run-ID" not in resp.headers
    assert hooked == []
    assert await api.provider.wait(1)
    assert (await server.client.list_runs())["data"] == []


async def test_http_exceptions_raised_by_a_durable_handler_are_its_response(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    """aiohttp handlers idiomatically `raise web.HTTPNotFound()`: that is the handler's answer, not a crash."""
    @endpoints.durable(id="find")
    async def find(request: web.Request, step: Any) -> web.Response:
        found = await step.run("lookup", lambda: None)
        if found is None:
            raise web.HTTPNotFound(text="no such thing")
        return web.json_response(found)

    api = await api_factory(server.url, lambda app: app.router.add_get("/find", find))
    async with http.get(f"{api.url}/find") as resp:
        assert resp.status == 404
        assert await resp.text() == "no such thing"
        run_id = resp.headers["X-Run-ID"]
    run = await stored_run(server, api, run_id)
    assert run["status"] == "Completed"
    assert run["output"]["status_code"] == 404 and run["output"]["body"] == "no such thing"


async def test_a_durable_endpoint_is_listed_as_one_and_cannot_be_paused(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    @endpoints.durable()
    async def ping(request: web.Request, step: Any) -> web.Response:
        return web.json_response({"pong": await step.run("pong", lambda: True)})

    api = await api_factory(server.url, lambda app: app.router.add_get("/ping", ping))
    async with http.get(f"{api.url}/ping") as resp:
        assert resp.status == 200 and await resp.json() == {"pong": True}
        run_id = resp.headers["X-Run-ID"]
    assert (await stored_run(server, api, run_id))["status"] == "Completed"  # its checkpoints are in
    async with http.get(f"{server.url}/metrics") as resp:  # the request is counted, by endpoint and status
        assert 'stepflow_durable_endpoint_requests_total{endpoint="GET-ping",status="200"} 1.0' in await resp.text()
    [listed] = [f for f in await server.client.list_functions() if f["id"] == "GET-ping"]
    assert listed["durable_endpoint"] is True and listed["paused"] is False and listed["paused_at"] is None
    # its runs execute inside the app's own requests: a pause could not hold them, so it is refused, not faked
    async with http.post(f"{server.url}/v2/functions/GET-ping/pause", json={}) as resp:
        answer = await resp.json()
        assert resp.status == 409 and "durable endpoint" in answer["error"]["message"], answer
    async with http.get(f"{api.url}/ping") as resp:
        assert resp.status == 200


async def test_a_request_continues_its_callers_trace_and_its_inline_steps_are_spans(
        server: RunningServer, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    @endpoints.durable()
    async def checkout(request: web.Request, step: Any) -> web.Response:
        total = await step.run("price", lambda: 12)
        await step.run("charge", lambda: total)
        return web.json_response({"total": total})

    api = await api_factory(server.url, lambda app: app.router.add_post("/checkout", checkout))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with http.post(f"{api.url}/checkout", headers={"traceparent": f"00-{trace_id}-{parent}-01"}) as resp:
        assert resp.status == 200 and await resp.json() == {"total": 12}
        run_id = resp.headers["X-Run-ID"]
    assert (await stored_run(server, api, run_id))["status"] == "Completed"
    async with http.get(f"{server.url}/v2/runs/{run_id}/trace") as resp:
        trace = (await resp.json())["data"]
    assert trace["trace_id"] == trace_id and trace["root"]["parent_id"] == parent
    children = trace["root"]["children"]
    assert sorted(c["name"] for c in children) == ["step charge", "step price"], trace
    assert all(c["attributes"]["inline"] is True and c["end"] >= c["start"] for c in children)
