"""Bulk cancel (`POST /v2/cancellations`, `Client.cancel_many`, `stepflow cancel`): a durable operation that
cancels a function's runs that have not ended, filtered by time and a CEL condition over the event, with progress
— and that goes on from its saved cursor when the process running it dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from conftest import free_port, make_store
from test_sdk_support import embedded, wait_for

import stepflow
from stepflow import Context
from stepflow.ids import new_ulid, now_ms
from stepflow.server import ServerSettings, create_app
from stepflow.store.records import OperationRecord, OperationStatus


def sleepy_app() -> stepflow.App:
    app = stepflow.App("bulk")

    @app.function(id="nap", trigger=stepflow.event("bulk/nap"))
    async def nap(ctx: Context) -> str:
        await ctx.step.sleep("long", "1h")
        return "woke"

    @app.function(id="other", trigger=stepflow.event("bulk/other"))
    async def other(ctx: Context) -> str:
        await ctx.step.sleep("long", "1h")
        return "woke"

    return app


@asynccontextmanager
async def served(engine: stepflow.Engine) -> AsyncIterator[stepflow.Client]:
    runner = web.AppRunner(create_app(engine.core, ServerSettings(dev=True)), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with stepflow.Client(f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await runner.cleanup()


async def start_sleeping(engine: stepflow.Engine, plans: list[str], name: str = "bulk/nap") -> list[str]:
    """One run per plan, each asleep for an hour; their run ids, oldest first."""
    ids = []
    for plan in plans:
        [event_id] = await engine.send({"name": name, "data": {"plan": plan}})
        ids.append(event_id)
        await asyncio.sleep(0.002)  # distinct creation milliseconds: the operation walks runs in id order
    runs: list[str] = []
    for event_id in ids:
        async def started(event_id: str = event_id) -> bool:
            found = await engine.get_event_runs(event_id)
            if found and found[0]["status"] == "Running":
                runs.append(found[0]["run_id"])
                return True
            return False

        await wait_for(started, what=f"the run of {event_id} to be asleep")
    return runs


async def wait_done(client: stepflow.Client, operation_id: str) -> dict[str, Any]:
    async def ended() -> bool:
        return bool((await client.get_cancellation(operation_id))["status"] != "Running")

    await wait_for(ended, what="the bulk cancel to end")
    return await client.get_cancellation(operation_id)


async def statuses(engine: stepflow.Engine, run_ids: list[str]) -> list[str]:
    return [(await engine.get_run(r))["status"] for r in run_ids]


async def test_bulk_cancel_with_a_condition_reports_progress(tmp_path: Path) -> None:
    async with embedded(tmp_path, sleepy_app()) as engine, served(engine) as client:
        runs = await start_sleeping(engine, ["free", "pro", "free", "pro", "free"])
        [bystander] = await start_sleeping(engine, ["free"], name="bulk/other")
        op = await client.cancel_many("nap", if_="event.data.plan == 'free'")
        assert op["status"] in ("Running", "Completed") and op["total"] == 5 and op["function_id"] == "nap"
        done = await wait_done(client, op["id"])
        assert {k: done[k] for k in ("status", "total", "processed", "cancelled", "skipped")} == {
            "status": "Completed", "total": 5, "processed": 5, "cancelled": 3, "skipped": 2}
        assert await statuses(engine, runs) == ["Cancelled", "Running", "Cancelled", "Running", "Cancelled"]
        assert await statuses(engine, [bystander]) == ["Running"]  # another function's run is left alone
        # everything else of the function, and only runs created before the operation
        later = await start_sleeping(engine, ["pro"])
        rest = await wait_done(client, (await client.cancel_many("nap"))["id"])
        assert (rest["total"], rest["cancelled"]) == (3, 3)
        assert await statuses(engine, runs + later) == ["Cancelled"] * 6


async def test_bulk_cancel_time_range_and_stop(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    async with embedded(tmp_path, sleepy_app()) as engine, served(engine) as client:
        old = await start_sleeping(engine, ["a", "b"])
        await asyncio.sleep(0.01)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.01)
        new = await start_sleeping(engine, ["c"])
        done = await wait_done(client, (await client.cancel_many("nap", since=middle))["id"])
        assert (done["total"], done["cancelled"]) == (1, 1) and done["from"] is not None
        assert await statuses(engine, old + new) == ["Running", "Running", "Cancelled"]
        # stopping one that has ended changes nothing; its progress stays readable
        stopped = await client.stop_cancellation(done["id"])
        assert stopped["status"] == "Completed" and stopped["cancelled"] == 1


async def test_bulk_cancel_refusals_say_why(tmp_path: Path) -> None:
    async with embedded(tmp_path, sleepy_app()) as engine, served(engine) as client, aiohttp.ClientSession() as http:
        base = client.base_url
        cases: list[tuple[Any, int, str]] = [
            ({"function_id": "nope"}, 404, "no function 'nope'"),
            ({"function_id": "nap", "if": "event.data.plan =="}, 400, ""),
            ({"function_id": "nap", "if": 3}, 400, "'if' must be a CEL expression"),
            ({"function_id": "nap", "from": "2026-12-01T10:00:00Z", "until": "2026-12-01T09:00:00Z"}, 400,
             "'from' must be before 'until'"),
            ({"function_id": "nap", "from": "soon"}, 400, "'from' must be an RFC 3339 time"),
            ({"function_id": "nap", "extra": 1}, 400, "expected"),
            ({}, 400, "'function_id' is required"),
            ([], 400, "expected"),
        ]
        for body, status, needle in cases:
            async with http.post(f"{base}/v2/cancellations", json=body) as resp:
                answer = await resp.json()
                assert resp.status == status, (body, answer)
                assert needle in answer["error"]["message"], (body, answer)
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{base}/v2/cancellations/{new_ulid()}") as resp:
                assert resp.status == 404 and "not found" in (await resp.json())["error"]["message"]
            async with http.request(method, f"{base}/v2/cancellations/op-1") as resp:
                assert resp.status == 400


async def test_a_bulk_cancel_goes_on_from_its_cursor_after_its_process_died(tmp_path: Path) -> None:
    """The process running it died after one saved batch: a new process takes it over once the lease has lapsed
    and cancels the runs after the saved cursor, adding to the saved counts."""
    async with embedded(tmp_path, sleepy_app()) as engine:
        runs = await start_sleeping(engine, ["a", "b", "c", "d", "e"])
    # between processes: the operation as the dead one left it (cursor after the 2nd run, its lease lapsed)
    store = await make_store(tmp_path, "embedded")
    await store.open()
    try:
        now = now_ms()
        op = await store.create_operation(OperationRecord(
            id=new_ulid(), kind="cancel", function_id="nap", params={"until": now}, status=OperationStatus.RUNNING,
            created_at=now))
        claimed = await store.claim_operation("dead-worker", now - 120_000, 30_000)
        assert claimed is not None and claimed.total == 5
        claimed.cursor, claimed.processed, claimed.succeeded = runs[1], 2, 2
        assert await store.save_operation(claimed, "dead-worker", now - 120_000, 30_000, done=False)
    finally:
        await store.close()
    async with embedded(tmp_path, sleepy_app()) as engine, served(engine) as client:
        done = await wait_done(client, op.id)
        assert {k: done[k] for k in ("status", "total", "processed", "cancelled")} == {
            "status": "Completed", "total": 5, "processed": 5, "cancelled": 5}
        # the first two were the dead process's batch (here never really cancelled): not done twice
        assert await statuses(engine, runs) == ["Running", "Running", "Cancelled", "Cancelled", "Cancelled"]
