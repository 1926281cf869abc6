"""Run lists (`GET /v1/runs`, `/v2/runs`, `Client.list_runs`): filters by event name, rerun origin and creation
time, a CEL query over event, output and run, combined with status, function and cursor paging; bad filters and
queries are 400s that say what is wrong."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningServer, StepServer, workflow_config
from test_sdk_support import first_run

from stepflow.engine import run_search
from stepflow.ids import new_ulid


async def _setup(stepflow: RunningServer, step_server: StepServer) -> dict[str, str]:
    ok = {"runtime": {"type": "http", "url": step_server.json("/ok", {"ok": True})}}
    await stepflow.register(workflow_config({"s": ok}, id="orders", event="shop/order.created"))
    await stepflow.register(workflow_config({"s": ok}, id="refunds", event="shop/refund.created"))
    runs: dict[str, str] = {}
    for name, key in (("shop/order.created", "order1"), ("shop/refund.created", "refund1")):
        runs[key] = (await first_run(stepflow.client, (await stepflow.client.send({"name": name, "data": {}}))[0]))[
            "run_id"]
        await asyncio.sleep(0.01)  # distinct creation milliseconds
    runs["middle"] = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.01)
    runs["order2"] = (await first_run(stepflow.client, (await stepflow.client.send(
        {"name": "shop/order.created", "data": {}}))[0]))["run_id"]
    runs["rerun"] = (await stepflow.client.rerun(runs["order1"]))["run_id"]
    return runs


async def test_filters_by_event_name_origin_and_time(stepflow: RunningServer, step_server: StepServer) -> None:
    runs = await _setup(stepflow, step_server)

    async def ids(**filters: object) -> list[str]:
        return [r["run_id"] for r in (await stepflow.client.list_runs(**filters))["data"]]  # type: ignore[arg-type]

    assert await ids(event_name="shop/order.created") == [runs["rerun"], runs["order2"], runs["order1"]]
    assert await ids(event_name="shop/refund.created") == [runs["refund1"]]
    assert await ids(event_name="shop/none") == []
    assert await ids(original_run_id=runs["order1"]) == [runs["rerun"]]
    assert await ids(original_run_id=runs["order2"]) == []
    middle = datetime.fromisoformat(runs["middle"])
    assert await ids(since=middle) == [runs["rerun"], runs["order2"]]
    assert await ids(until=middle) == [runs["refund1"], runs["order1"]]
    assert await ids(since=middle, event_name="shop/order.created", function_id="orders") == [runs["rerun"],
                                                                                              runs["order2"]]
    assert await ids(since=datetime.now(UTC) + timedelta(hours=1)) == []
    # paging keeps the filters: two pages of the order runs
    first = await stepflow.client.list_runs(event_name="shop/order.created", limit=2)
    assert [r["run_id"] for r in first["data"]] == [runs["rerun"], runs["order2"]] and first["has_more"]
    second = await stepflow.client.list_runs(event_name="shop/order.created", limit=2, cursor=first["cursor"])
    assert [r["run_id"] for r in second["data"]] == [runs["order1"]] and not second["has_more"]
    # /v2 and epoch milliseconds
    async with aiohttp.ClientSession() as http:
        ms = int(middle.timestamp() * 1000)
        async with http.get(f"{stepflow.url}/v2/runs", params={"from": str(ms)}) as resp:
            assert resp.status == 200
            assert [r["run_id"] for r in (await resp.json())["data"]] == [runs["rerun"], runs["order2"]]


async def test_bad_filters_are_400_and_say_why(stepflow: RunningServer) -> None:
    cases = [
        ({"from": "yesterday"}, "'from' must be an RFC 3339 time"),
        ({"until": "2026-12-01T10:00:00"}, "needs a time zone"),
        ({"from": "2026-12-01T10:00:00Z", "until": "2026-12-01T09:00:00Z"}, "'from' must be before 'until'"),
        ({"original_run_id": "run-1"}, "'original_run_id' must be a run id"),
    ]
    async with aiohttp.ClientSession() as http:
        for version in ("v1", "v2"):
            for params, needle in cases:
                async with http.get(f"{stepflow.url}/{version}/runs", params=params) as resp:
                    answer = await resp.json()
                    assert resp.status == 400, (params, answer)
                    assert needle in answer["error"]["message"], (params, answer)
        async with http.get(f"{stepflow.url}/v1/runs", params={"original_run_id": new_ulid().lower()}) as resp:
            assert resp.status == 200 and (await resp.json())["data"] == []


async def test_events_list_newest_first_with_filters_and_pages(stepflow: RunningServer) -> None:
    sent: list[str] = []
    for n, name in enumerate(["a/one", "b/two", "a/one", "a/one"]):
        sent += await stepflow.client.send({"name": name, "data": {"n": n}, "id": f"evt-{n}"})
        await asyncio.sleep(0.01)  # distinct received milliseconds
    assert sent == ["evt-0", "evt-1", "evt-2", "evt-3"]
    every = await stepflow.client.list_events()
    assert [e["id"] for e in every["data"]] == ["evt-3", "evt-2", "evt-1", "evt-0"] and not every["has_more"]
    assert every["data"][1]["data"] == {"n": 2} and every["data"][1]["name"] == "a/one"
    first = await stepflow.client.list_events(name="a/one", limit=2)
    assert [e["id"] for e in first["data"]] == ["evt-3", "evt-2"] and first["cursor"] == "evt-2"
    second = await stepflow.client.list_events(name="a/one", limit=2, cursor=first["cursor"])
    assert [e["id"] for e in second["data"]] == ["evt-0"] and not second["has_more"]
    received = datetime.fromisoformat(every["data"][1]["received_at"].replace("Z", "+00:00"))
    assert [e["id"] for e in (await stepflow.client.list_events(since=received))["data"]] == ["evt-3", "evt-2"]
    assert [e["id"] for e in (await stepflow.client.list_events(until=received))["data"]] == ["evt-1", "evt-0"]
    async with aiohttp.ClientSession() as http:
        for params, needle in (({"cursor": "evt-99"}, "not an event of a previous page"),
                               ({"cursor": "bad id!"}, "'cursor' must be an event id"),
                               ({"received_after": "soon"}, "'received_after' must be an RFC 3339 time"),
                               ({"received_after": "2000", "received_before": "1000"}, "must be before"),
                               ({"limit": "0"}, "'limit' must be between")):
            async with http.get(f"{stepflow.url}/v1/events", params=params) as resp:
                answer = await resp.json()
                assert resp.status == 400 and needle in answer["error"]["message"], (params, answer)


async def _query_setup(stepflow: RunningServer, step_server: StepServer) -> dict[str, str]:
    async def total(doc: dict[str, Any], _: web.Request) -> web.StreamResponse:
        return web.json_response({"total": doc["event"]["data"]["total"] * 2})

    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.route(
        "/total", total)}}}, id="orders", event="shop/order.created"))
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.json(
        "/refuse", {"error": "card declined"}, status=400)}}}, id="refunds", event="shop/refund.created"))
    runs: dict[str, str] = {}
    for key, name, data in (("acme_order", "shop/order.created", {"tenant": "acme", "total": 5}),
                            ("globex_order", "shop/order.created", {"tenant": "globex", "total": 50}),
                            ("anonymous_order", "shop/order.created", {"total": 7}),
                            ("acme_refund", "shop/refund.created", {"tenant": "acme", "total": 5})):
        event_id = (await stepflow.client.send({"name": name, "data": data}))[0]
        runs[key] = (await first_run(stepflow.client, event_id))["run_id"]
        await stepflow.client.wait_for_run(runs[key])
    return runs


async def test_cel_query_over_event_output_and_run(stepflow: RunningServer, step_server: StepServer) -> None:
    runs = await _query_setup(stepflow, step_server)

    async def search(query: str, **filters: Any) -> tuple[list[str], dict[str, Any]]:
        page = await stepflow.client.list_runs(query=query, **filters)
        return [r["run_id"] for r in page["data"]], page["search"]

    found, info = await search('event.data.tenant == "acme"')
    assert found == [runs["acme_refund"], runs["acme_order"]]
    # the event without a tenant cannot be evaluated: not a match, and counted so a typo is visible
    assert info["scanned"] == 4 and info["errors"] == 1 and "tenant" in info["first_error"]
    found, info = await search('has(event.data.tenant) && event.data.tenant == "acme"')
    assert found == [runs["acme_refund"], runs["acme_order"]] and info["errors"] == 0
    assert (await search('run.status == "Failed"'))[0] == [runs["acme_refund"]]
    # output: a completed run's output; a failed run's error (Inngest's `output.name == "…"` search)
    assert (await search("output.total > 20"))[0] == [runs["globex_order"]]
    failed = (await search('output.code == "step_error" && output.body.error == "card declined"'))[0]
    assert failed == [runs["acme_refund"]]
    assert (await search('event.name == "shop/order.created" && event.data.total < 10'))[0] == [
        runs["anonymous_order"], runs["acme_order"]]
    # combined with the indexed filters
    assert (await search('event.data.total == 5', function_id="orders"))[0] == [runs["acme_order"]]
    assert (await search("true", status="Failed"))[0] == [runs["acme_refund"]]
    # pages: the cursor carries on where the last match was
    first = await stepflow.client.list_runs(query='event.data.total <= 7', limit=2)
    assert [r["run_id"] for r in first["data"]] == [runs["acme_refund"], runs["anonymous_order"]] and first[
        "has_more"]
    second = await stepflow.client.list_runs(query='event.data.total <= 7', limit=2, cursor=first["cursor"])
    assert [r["run_id"] for r in second["data"]] == [runs["acme_order"]]
    # /v2 too
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stepflow.url}/v2/runs", params={"query": 'run.function_id == "refunds"'}) as resp:
            body = await resp.json()
            assert resp.status == 200 and [r["run_id"] for r in body["data"]] == [runs["acme_refund"]]
            assert body["data"][0]["status"] == "FAILED" and body["search"]["scanned"] == 4


async def test_cel_query_stops_at_the_scan_budget_and_pages_on(
        stepflow: RunningServer, step_server: StepServer, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = await _query_setup(stepflow, step_server)
    monkeypatch.setattr(run_search, "SCAN_BUDGET", 2)
    seen: list[str] = []
    cursor = None
    scanned = 0
    for _ in range(4):
        page = await stepflow.client.list_runs(query='event.data.total == 5 && run.status == "Completed"',
                                               cursor=cursor)
        seen += [r["run_id"] for r in page["data"]]
        scanned += page["search"]["scanned"]
        cursor = page["cursor"]
        if not page["has_more"]:
            break
        assert page["search"]["scanned"] == 2   # each page read at most the budget
    # the only match is the oldest run: two pages of two runs each, the first one empty but with a cursor
    assert seen == [runs["acme_order"]] and scanned == 4 and cursor is None


async def test_bad_cel_queries_are_400_and_say_why(stepflow: RunningServer, step_server: StepServer) -> None:
    await _query_setup(stepflow, step_server)
    async with aiohttp.ClientSession() as http:
        for version in ("v1", "v2"):
            for query, needle in (("event.data.", "invalid CEL expression"),
                                  ("event.data.total", "must be a condition (true or false)"),
                                  ("   ", "non-empty")):
                async with http.get(f"{stepflow.url}/{version}/runs", params={"query": query}) as resp:
                    answer = await resp.json()
                    assert resp.status == 400, (query, answer)
                    assert "'query'" in answer["error"]["message"] and needle in answer["error"]["message"], answer
