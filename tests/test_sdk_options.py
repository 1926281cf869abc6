"""Function options of `@app.function` (issue 3, item 5), run embedded on a real SQLite file: retries,
cancel_on, idempotency, timeouts (start, finish) and on_failure handlers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from test_sdk_support import Calls, embedded, first_run, wait_for

import stepflow
from stepflow import Context, DefinitionError, StepError


@pytest.mark.parametrize(("retries", "attempts"), [(0, 1), (2, 3), (None, 5)])
async def test_retries_means_n_plus_one_attempts(tmp_path: Path, retries: int | None, attempts: int) -> None:
    app = stepflow.App("opts")
    calls = Calls()
    seen_attempts: list[int] = []

    def always_fails() -> None:
        calls.hit("step")
        raise RuntimeError("down")

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=retries)
    async def f(ctx: Context) -> dict[str, Any]:
        seen_attempts.append(ctx.attempt)
        try:
            await ctx.step.run("step", always_fails)
        except StepError as exc:
            return {"message": exc.error_message}
        return {}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=15)
    assert calls["step"] == attempts
    assert f"gave up after {attempts} attempt{'s' if attempts != 1 else ''})" in out["message"]
    # the function saw the attempt number of each try, 0-based
    assert sorted(set(seen_attempts)) == list(range(attempts))


async def test_cancel_on_event_with_cel_if(tmp_path: Path) -> None:
    app = stepflow.App("opts")
    calls = Calls()

    @app.function(id="fulfil", trigger=stepflow.event("order/placed"),
                  cancel_on={"event": "order/cancelled", "if": "event.data.order == async.data.order"})
    async def fulfil(ctx: Context) -> str:
        await ctx.step.run("reserve", lambda: calls.hit("reserve"))
        await ctx.step.sleep("wait-for-stock", "10s")
        await ctx.step.run("ship", lambda: calls.hit("ship"))
        return "shipped"

    async with embedded(tmp_path, app) as engine:
        placed = await engine.send({"name": "order/placed", "data": {"order": 1}})
        run_id = await _run_id(engine, placed[0])

        async def sleeping() -> bool:
            return any(s["step_id"] == "wait-for-stock" for s in await engine.get_run_steps(run_id))

        await wait_for(sleeping, what="the run to sleep")
        await engine.send({"name": "order/cancelled", "data": {"order": 2}})   # another order: no effect
        await asyncio.sleep(0.2)
        assert (await engine.get_run(run_id))["status"] == "Running"
        cancel = await engine.send({"name": "order/cancelled", "data": {"order": 1}})
        run = await engine.wait_for_run(run_id, timeout=5)
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run_id)}
    assert run["status"] == "Cancelled"
    assert cancel[0] in run["error"]["message"]
    assert dict(calls) == {"reserve": 1}   # the step after the sleep never ran
    assert steps["wait-for-stock"]["status"] == "cancelled"


async def test_cancel_on_several_events(tmp_path: Path) -> None:
    app = stepflow.App("opts")

    @app.function(id="f", trigger=stepflow.event("t/go"),
                  cancel_on=[{"event": "t/stop"}, {"event": "t/abort", "if": "async.data.hard == true"}])
    async def f(ctx: Context) -> str:
        await ctx.step.sleep("nap", "10s")
        return "done"

    async with embedded(tmp_path, app) as engine:
        first = await engine.send({"name": "t/go"})
        second = await engine.send({"name": "t/go"})
        one, two = await _run_id(engine, first[0]), await _run_id(engine, second[0])
        await engine.send({"name": "t/abort", "data": {"hard": False}})
        await asyncio.sleep(0.1)
        assert (await engine.get_run(one))["status"] == "Running"
        await engine.send({"name": "t/abort", "data": {"hard": True}})
        assert (await engine.wait_for_run(one, timeout=5))["status"] == "Cancelled"
        assert (await engine.wait_for_run(two, timeout=5))["status"] == "Cancelled"


async def test_idempotency_one_run_per_key(tmp_path: Path) -> None:
    app = stepflow.App("opts")
    calls = Calls()

    @app.function(id="welcome", trigger=stepflow.event("user/created"), idempotency="event.data.user")
    async def welcome(ctx: Context) -> str:
        calls.hit(ctx.event.data["user"])
        return str(ctx.event.data["user"])

    async with embedded(tmp_path, app) as engine:
        a1 = await engine.send({"name": "user/created", "data": {"user": "ann"}})
        a2 = await engine.send({"name": "user/created", "data": {"user": "ann", "again": True}})
        b1 = await engine.send({"name": "user/created", "data": {"user": "bob"}})
        assert await engine.wait_for_output(a1[0], timeout=10) == "ann"
        assert await engine.wait_for_output(b1[0], timeout=10) == "bob"
        a3 = await engine.send({"name": "user/created", "data": {"user": "ann"}})   # after the first ended too
        await asyncio.sleep(0.2)
        assert await engine.get_event_runs(a2[0]) == []
        assert await engine.get_event_runs(a3[0]) == []
        runs = await engine.list_runs(function_id="welcome")
    assert sorted(r["output"] for r in runs) == ["ann", "bob"]
    assert dict(calls) == {"ann": 1, "bob": 1}


async def test_idempotency_key_can_combine_fields(tmp_path: Path) -> None:
    app = stepflow.App("opts")

    @app.function(id="f", trigger=stepflow.event("t/go"),
                  idempotency="event.data.user + '-' + string(event.data.day)")
    async def f(ctx: Context) -> int:
        return int(ctx.event.data["day"])

    async with embedded(tmp_path, app) as engine:
        ids = []
        for user, day in [("a", 1), ("a", 1), ("a", 2), ("b", 1)]:
            ids += await engine.send({"name": "t/go", "data": {"user": user, "day": day}})
        await wait_for(lambda: _count_runs(engine, "f", 3), what="three runs")
        await asyncio.sleep(0.1)
        counts = [len(await engine.get_event_runs(i)) for i in ids]
    assert counts == [1, 0, 1, 1]


async def test_finish_timeout_cancels_a_run_that_sleeps_past_it(tmp_path: Path) -> None:
    app = stepflow.App("opts")
    calls = Calls()

    @app.function(id="f", trigger=stepflow.event("t/go"), timeouts={"finish": "400ms"})
    async def f(ctx: Context) -> str:
        await ctx.step.run("before", lambda: calls.hit("before"))
        await ctx.step.sleep("long", "5s")
        await ctx.step.run("after", lambda: calls.hit("after"))
        return "done"

    async with embedded(tmp_path, app) as engine:
        started = time.monotonic()
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
        elapsed = time.monotonic() - started
    assert run["status"] == "Cancelled"
    assert run["error"]["code"] == "finish_timeout" and "0.4s" in run["error"]["message"]
    assert 0.35 <= elapsed < 3.0
    assert dict(calls) == {"before": 1}


async def test_finish_timeout_does_not_touch_a_run_that_finishes_in_time(tmp_path: Path) -> None:
    app = stepflow.App("opts")

    @app.function(id="f", trigger=stepflow.event("t/go"), timeouts={"finish": "2s"})
    async def f(ctx: Context) -> str:
        await ctx.step.sleep("short", "100ms")
        return "in time"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "in time"


async def test_start_timeout_cancels_a_run_that_cannot_start_in_time(tmp_path: Path) -> None:
    """One worker slot (concurrency=1) is held by a long step; a run queued behind it with a 200 ms start
    timeout cannot start in time and must be Cancelled, never run."""
    app = stepflow.App("opts")
    calls = Calls()

    def hog() -> str:
        time.sleep(0.8)
        return "hogged"

    @app.function(id="hog", trigger=stepflow.event("t/hog"))
    async def hog_fn(ctx: Context) -> str:
        return await ctx.step.run("hog", hog)

    @app.function(id="impatient", trigger=stepflow.event("t/go"), timeouts={"start": "200ms"})
    async def impatient(ctx: Context) -> str:
        calls.hit("impatient")
        return "started"

    async with embedded(tmp_path, app, concurrency=1) as engine:
        hogs = await engine.send({"name": "t/hog"})
        hog_run = await _run_id(engine, hogs[0])

        async def hogging() -> bool:
            return bool((await engine.get_run(hog_run))["status"] == "Running")

        await wait_for(hogging, what="the hog to start")
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
        assert await engine.wait_for_output(hogs[0], timeout=10) == "hogged"
    assert run["status"] == "Cancelled", run
    assert run["error"]["code"] == "start_timeout"
    assert calls["impatient"] == 0


async def test_start_timeout_does_not_cancel_a_run_that_started(tmp_path: Path) -> None:
    app = stepflow.App("opts")

    @app.function(id="f", trigger=stepflow.event("t/go"), timeouts={"start": "200ms"})
    async def f(ctx: Context) -> str:
        await ctx.step.sleep("nap", "500ms")   # running well past the start timeout is fine
        return "finished"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "finished"


async def test_on_failure_handler_gets_the_failed_runs_error(tmp_path: Path) -> None:
    app = stepflow.App("opts")
    handled: list[dict[str, Any]] = []

    async def notify(ctx: Context) -> str:
        data = ctx.event.data
        handled.append({"trigger": ctx.event.name, **data})
        await ctx.step.run("page-oncall", lambda: "paged")
        return f"handled {data['error']['name']}"

    @app.function(id="import", trigger=stepflow.event("t/import"), retries=1, on_failure=notify)
    async def import_fn(ctx: Context) -> str:
        if ctx.event.data.get("ok"):
            return "imported"
        raise ValueError(f"cannot import {ctx.event.data['file']}")

    async with embedded(tmp_path, app) as engine:
        bad = await engine.send({"name": "t/import", "data": {"file": "a.csv"}})
        good = await engine.send({"name": "t/import", "data": {"file": "b.csv", "ok": True}})
        failed = await first_run(engine, bad[0])
        assert await engine.wait_for_output(good[0], timeout=10) == "imported"

        async def handler_done() -> bool:
            runs = await engine.list_runs(function_id="import-failure")
            return bool(runs) and runs[0]["status"] == "Completed"

        await wait_for(handler_done, what="the on_failure handler")
        await asyncio.sleep(0.1)
        handler_runs = await engine.list_runs(function_id="import-failure")
    assert failed["status"] == "Failed"
    assert len(handler_runs) == 1 and handler_runs[0]["output"] == "handled ValueError"   # only for the failure
    assert len(handled) == 1
    seen = handled[0]
    assert seen["trigger"] == "inngest/function.failed"
    assert seen["function_id"] == "import" and seen["run_id"] == failed["run_id"]
    assert seen["error"]["name"] == "ValueError"
    assert seen["error"]["message"].startswith("cannot import a.csv")
    assert "raise ValueError" in seen["error"]["stack"]
    assert seen["event"]["name"] == "t/import" and seen["event"]["data"] == {"file": "a.csv"}  # what failed
    assert handled[0]["error"] == failed["error"]


def test_invalid_options_fail_at_decoration_time() -> None:
    app = stepflow.App("opts")

    async def body(ctx: Context) -> None:
        return None

    with pytest.raises(DefinitionError):
        app.function(id="bad-cancel", trigger=stepflow.event("t/go"), cancel_on={"if": "true"})(body)
    with pytest.raises(DefinitionError):
        app.function(id="bad-idem", trigger=stepflow.event("t/go"), idempotency="event.data.(")(body)
    with pytest.raises((DefinitionError, ValueError)):
        app.function(id="bad-timeout", trigger=stepflow.event("t/go"), timeouts={"finish": "soon"})(body)
    with pytest.raises(DefinitionError):
        app.function(id="sync-handler", trigger=stepflow.event("t/go"))(lambda ctx: None)  # type: ignore[arg-type, return-value]
    app.function(id="ok", trigger=stepflow.event("t/go"))(body)
    with pytest.raises(DefinitionError):
        app.function(id="ok", trigger=stepflow.event("t/go"))(body)   # declared twice
    assert list(app.functions) == ["ok"]


async def _run_id(engine: stepflow.Engine, event_id: str) -> str:
    async def started() -> bool:
        return bool(await engine.get_event_runs(event_id))

    await wait_for(started, what=f"a run of event {event_id}")
    return str((await engine.get_event_runs(event_id))[0]["run_id"])


async def _count_runs(engine: stepflow.Engine, function_id: str, n: int) -> bool:
    return len(await engine.list_runs(function_id=function_id)) >= n


async def test_cancelling_a_sleeping_run(tmp_path: Path) -> None:
    app = stepflow.App("opts")
    calls = Calls()

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> str:
        await ctx.step.sleep("nap", "10s")
        calls.hit("after")
        return "woke"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run_id = await _run_id(engine, ids[0])

        async def sleeping() -> bool:
            return any(s["step_id"] == "nap" for s in await engine.get_run_steps(run_id))

        await wait_for(sleeping, what="the sleep")
        cancelled = await engine.cancel(run_id)
        await asyncio.sleep(0.2)
        run = await engine.get_run(run_id)
    assert cancelled["status"] == "Cancelled" and run["status"] == "Cancelled"
    assert calls["after"] == 0
