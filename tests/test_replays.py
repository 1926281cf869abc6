"""Replays (`POST /v2/replays`, `Client.replay`, `stepflow replay`): a durable operation that starts runs of a
function's current version for past events — every event in a range, or the events of its failed runs — with
progress, and without starting a run twice when the process running it dies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from conftest import make_store
from test_bulk_cancel import served
from test_sdk_support import embedded, first_run, wait_for

import stepflow
from stepflow import Context
from stepflow.engine.runs import new_run
from stepflow.ids import new_ulid, now_ms
from stepflow.store.records import OperationRecord, OperationStatus


def shop_app(state: dict[str, bool]) -> stepflow.App:
    app = stepflow.App("shop")

    @app.function(id="orders", trigger=stepflow.event("shop/order"), retries=0)
    async def orders(ctx: Context) -> str:
        total = await ctx.step.run("total", lambda: ctx.event.data["n"] * 10)
        if state["broken"]:
            raise stepflow.NonRetriableError("the deploy broke orders")
        return f"ok {total}"

    return app


async def wait_replay(client: stepflow.Client, operation_id: str, runs: int) -> dict[str, Any]:
    """The replay once it has ended and its `runs` runs have too."""
    async def ended() -> bool:
        op = await client.get_replay(operation_id)
        return bool(op["status"] != "Running" and op["completed"] + op["failed"] >= runs)

    await wait_for(ended, what="the replay and its runs to end")
    return await client.get_replay(operation_id)


async def test_replaying_failed_runs_into_the_fixed_function(tmp_path: Path) -> None:
    state = {"broken": True}
    async with embedded(tmp_path, shop_app(state)) as engine, served(engine) as client:
        failed = [await first_run(engine, (await engine.send({"name": "shop/order", "data": {"n": n}}))[0])
                  for n in (1, 2, 3)]
        assert [r["status"] for r in failed] == ["Failed"] * 3
        state["broken"] = False  # the fix is deployed
        op = await client.replay("orders", since=datetime(2020, 1, 1, tzinfo=UTC), statuses=["Failed"])
        assert op["total"] == 3 and op["statuses"] == ["FAILED"]
        done = await wait_replay(client, op["id"], 3)
        assert {k: done[k] for k in ("status", "total", "processed", "started", "skipped", "completed", "failed")} == {
            "status": "Completed", "total": 3, "processed": 3, "started": 3, "skipped": 0, "completed": 3,
            "failed": 0}
        reruns = (await client.list_runs(function_id="orders", status="Completed"))["data"]
        assert sorted(r["original_run_id"] for r in reruns) == sorted(r["run_id"] for r in failed)
        assert sorted(r["output"] for r in reruns) == ["ok 10", "ok 20", "ok 30"]


async def test_replaying_events_of_a_time_range(tmp_path: Path) -> None:
    state = {"broken": False}
    async with embedded(tmp_path, shop_app(state)) as engine, served(engine) as client:
        await first_run(engine, (await engine.send({"name": "shop/order", "data": {"n": 0}}))[0])
        await asyncio.sleep(0.01)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.01)
        for n in (1, 2):
            await first_run(engine, (await engine.send({"name": "shop/order", "data": {"n": n}}))[0])
        await engine.send({"name": "shop/unrelated", "data": {}})  # starts nothing, and is not replayed
        op = await client.replay("orders", since=middle, rate=1)
        assert op["total"] == 2  # only events the function's trigger names, received since `middle`
        done = await wait_replay(client, op["id"], 2)
        assert (done["started"], done["completed"]) == (2, 2)
        outputs = sorted(r["output"] for r in (await client.list_runs(function_id="orders"))["data"])
        assert outputs == ["ok 0", "ok 10", "ok 10", "ok 20", "ok 20"]


async def test_replay_refusals_say_why(tmp_path: Path) -> None:
    async with embedded(tmp_path, shop_app({"broken": False})) as engine, served(engine) as client, \
            aiohttp.ClientSession() as http:
        cases: list[tuple[Any, int, str]] = [
            ({"function_id": "nope"}, 404, "no function 'nope'"),
            ({"function_id": "orders", "statuses": ["Sleeping"]}, 400, "unknown status 'Sleeping'"),
            ({"function_id": "orders", "statuses": []}, 400, "non-empty list"),
            ({"function_id": "orders", "rate": 0}, 400, "'rate' must be between 1 and 10000"),
            ({"function_id": "orders", "rate": "fast"}, 400, "'rate' must be a whole number"),
            ({"function_id": "orders", "to": "2026-12-01T10:00:00Z", "until": "2026-12-01T10:00:00Z"}, 400,
             "not both"),
            ({"function_id": "orders", "from": "2999-01-01T00:00:00Z"}, 400, "'from' must be before"),
            ({"function_id": "orders", "statuses": "Failed"}, 400, "non-empty list"),
        ]
        for body, status, needle in cases:
            async with http.post(f"{client.base_url}/v2/replays", json=body) as resp:
                answer = await resp.json()
                assert resp.status == status, (body, answer)
                assert needle in answer["error"]["message"], (body, answer)
        async with http.get(f"{client.base_url}/v2/replays/{new_ulid()}") as resp:
            assert resp.status == 404
        # a cancellation's id is not a replay's
        cancellation = await client.cancel_many("orders")
        async with http.get(f"{client.base_url}/v2/replays/{cancellation['id']}") as resp:
            assert resp.status == 404


async def test_a_replay_taken_over_after_a_crash_starts_no_run_twice(tmp_path: Path) -> None:
    state = {"broken": False}
    app = shop_app(state)
    async with embedded(tmp_path, app) as engine:
        events = [(await engine.send({"name": "shop/order", "data": {"n": n}}))[0] for n in range(5)]
        for event_id in events:
            await first_run(engine, event_id)
        fn = engine.core.functions.get_active("orders")
        assert fn is not None
    # the dead process's last act: its first batch (2 runs) stored with the cursor past them, then it died
    store = await make_store(tmp_path, "embedded")
    await store.open()
    try:
        now = now_ms()
        op = await store.create_operation(OperationRecord(
            id=new_ulid(), kind="replay", function_id="orders", params={"until": now, "names": ["shop/order"]},
            status=OperationStatus.RUNNING, created_at=now))
        claimed = await store.claim_operation("dead-worker", now - 120_000, 30_000)
        assert claimed is not None and claimed.total == 5
        batch = await store.replay_batch(claimed, 2)
        runs = []
        for cursor, event, _ in batch:
            run = new_run(fn[1], fn[0], event.to_dict(), now)
            run.operation_id = op.id
            runs.append((run, event.id))
            claimed.cursor = cursor
        claimed.processed = claimed.succeeded = 2
        assert await store.save_operation(claimed, "dead-worker", now - 120_000, 30_000, done=False, runs=runs)
    finally:
        await store.close()
    async with embedded(tmp_path, app) as engine, served(engine) as client:
        done = await wait_replay(client, op.id, 5)
        assert (done["status"], done["started"], done["completed"]) == ("Completed", 5, 5)
        replayed = (await client.list_runs(function_id="orders", limit=100))["data"]
        assert len(replayed) == 10  # 5 originals + exactly one replay of each event
        by_event: dict[str, int] = {}
        for run in replayed:
            by_event[run["event_id"]] = by_event.get(run["event_id"], 0) + 1
        assert by_event == {event_id: 2 for event_id in events}
