"""The SDK's step tools, run embedded (issue 3, items 1 and 2): `stepflow.Engine` on a real SQLite file,
the functions called in-process under the SDK protocol. Every test checks values, and counts how often the
user's callables ran: memoization means once per run, however often the function is replayed."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import StepServer
from test_sdk_support import Calls, embedded, first_run, wait_for

import stepflow
from stepflow import Context, StepError

# --- step.run ---------------------------------------------------------------------------------------------


async def test_run_sync_callable_runs_off_the_loop_and_async_on_it(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    threads: dict[str, threading.Thread] = {}

    def double(n: int, *, plus: int = 0) -> int:
        threads["sync"] = threading.current_thread()
        return n * 2 + plus

    async def increment(n: int) -> int:
        threads["async"] = threading.current_thread()
        return n + 1

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> dict[str, int]:
        a = await ctx.step.run("double", double, ctx.event.data["n"], plus=1)
        b = await ctx.step.run("increment", increment, a)
        return {"a": a, "b": b}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go", "data": {"n": 20}})
        assert await engine.wait_for_output(ids[0], timeout=10) == {"a": 41, "b": 42}
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = await engine.get_run_steps(run["run_id"])
    assert [(s["step_id"], s["status"], s["output"], s["kind"]) for s in steps] == [
        ("double", "completed", 41, "run"), ("increment", "completed", 42, "run")]
    # a sync callable must not stall the event loop: it runs in a worker thread; an async one on the loop
    assert threads["sync"] is not threading.main_thread()
    assert threads["async"] is threading.main_thread()


async def test_sync_step_does_not_block_other_runs(tmp_path: Path) -> None:
    """While one run's sync step blocks for 0.6 s, another run completes: the loop stays free."""
    app = stepflow.App("steps")
    finished: dict[str, float] = {}

    def block() -> str:
        time.sleep(0.6)
        finished["slow"] = time.monotonic()
        return "slow"

    def quick() -> str:
        finished["quick"] = time.monotonic()
        return "quick"

    @app.function(id="slow", trigger=stepflow.event("t/slow"))
    async def slow(ctx: Context) -> str:
        return await ctx.step.run("block", block)

    @app.function(id="quick", trigger=stepflow.event("t/quick"))
    async def fast(ctx: Context) -> str:
        return await ctx.step.run("quick", quick)

    async with embedded(tmp_path, app) as engine:
        slow_ids = await engine.send({"name": "t/slow"})
        await asyncio.sleep(0.1)
        quick_ids = await engine.send({"name": "t/quick"})
        assert await engine.wait_for_output(quick_ids[0], timeout=10) == "quick"
        assert await engine.wait_for_output(slow_ids[0], timeout=10) == "slow"
    assert finished["quick"] < finished["slow"] - 0.2


# --- sleeps ----------------------------------------------------------------------------------------------


async def test_sleep_delays_the_run(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    seen: dict[str, float] = {}

    def stamp(name: str) -> float:
        seen[name] = time.time()
        return seen[name]

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> float:
        before = await ctx.step.run("before", stamp, "before")
        await ctx.step.sleep("nap", "1s")
        after = await ctx.step.run("after", stamp, "after")
        return after - before

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        waited = await engine.wait_for_output(ids[0], timeout=10)
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert 0.95 <= waited < 3.0
    assert seen["after"] - seen["before"] >= 0.95
    assert steps["nap"]["kind"] == "sleep" and steps["nap"]["status"] == "completed"


async def test_sleep_accepts_a_timedelta(tmp_path: Path) -> None:
    app = stepflow.App("steps")

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> float:
        start = await ctx.step.run("start", time.time)
        await ctx.step.sleep("nap", timedelta(milliseconds=400))
        return await ctx.step.run("end", time.time) - start

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert 0.38 <= await engine.wait_for_output(ids[0], timeout=10) < 2.5


async def test_sleep_until_a_datetime_aware_or_naive_utc(tmp_path: Path) -> None:
    app = stepflow.App("steps")

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> dict[str, float]:
        target = datetime.fromisoformat(ctx.event.data["until"])
        await ctx.step.sleep_until("until-aware", target)
        first = await ctx.step.run("first", time.time)
        # a naive datetime is UTC
        naive = (target + timedelta(milliseconds=400)).astimezone(UTC).replace(tzinfo=None)
        await ctx.step.sleep_until("until-naive", naive)
        second = await ctx.step.run("second", time.time)
        return {"first": first, "second": second}

    async with embedded(tmp_path, app) as engine:
        target = datetime.now(UTC) + timedelta(milliseconds=600)
        ids = await engine.send({"name": "t/go", "data": {"until": target.isoformat()}})
        out = await engine.wait_for_output(ids[0], timeout=10)
    assert out["first"] >= target.timestamp() - 0.02
    assert out["second"] >= target.timestamp() + 0.4 - 0.02
    assert out["second"] - target.timestamp() < 2.5


async def test_sleep_until_the_past_returns_at_once(tmp_path: Path) -> None:
    app = stepflow.App("steps")

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> str:
        await ctx.step.sleep_until("past", datetime.now(UTC) - timedelta(hours=1))
        return "woke"

    async with embedded(tmp_path, app) as engine:
        started = time.monotonic()
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "woke"
        assert time.monotonic() - started < 1.0


# --- wait_for_event --------------------------------------------------------------------------------------


def waiting_app(**wait: Any) -> stepflow.App:
    app = stepflow.App("steps")

    @app.function(id="signup", trigger=stepflow.event("user/signed.up"))
    async def signup(ctx: Context) -> dict[str, Any] | None:
        approved = await ctx.step.wait_for_event("approval", event="user/approved", **wait)
        if approved is None:
            return None
        return {"name": approved.name, "data": approved.data, "id": approved.id, "is_event": isinstance(
            approved, stepflow.Event)}

    return app


async def wait_registered(engine: stepflow.Engine, run_id: str) -> None:
    async def registered() -> bool:
        return any(s["step_id"] == "approval" and s["status"] == "scheduled"
                   for s in await engine.get_run_steps(run_id))

    await wait_for(registered, what="the wait to be registered")


async def test_wait_for_event_with_match(tmp_path: Path) -> None:
    async with embedded(tmp_path, waiting_app(match="data.user_id", timeout="10s")) as engine:
        ids = await engine.send({"name": "user/signed.up", "data": {"user_id": "u1"}})
        run = await _run_of(engine, ids[0])
        await wait_registered(engine, run)
        await engine.send({"name": "user/approved", "data": {"user_id": "someone-else", "n": 1}})
        await engine.send({"name": "user/other", "data": {"user_id": "u1", "n": 2}})
        await asyncio.sleep(0.2)
        assert (await engine.get_run(run))["status"] == "Running"   # neither matched
        matching = await engine.send({"name": "user/approved", "data": {"user_id": "u1", "n": 3}})
        out = await engine.wait_for_output(run, timeout=10)
    assert out == {"name": "user/approved", "data": {"user_id": "u1", "n": 3}, "id": matching[0], "is_event": True}


async def test_wait_for_event_with_cel_if(tmp_path: Path) -> None:
    app = waiting_app(if_="async.data.amount >= event.data.min && async.data.user_id == event.data.user_id",
                      timeout="10s")
    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "user/signed.up", "data": {"user_id": "u1", "min": 100}})
        run = await _run_of(engine, ids[0])
        await wait_registered(engine, run)
        await engine.send({"name": "user/approved", "data": {"user_id": "u1", "amount": 99}})
        await engine.send({"name": "user/approved", "data": {"user_id": "u2", "amount": 500}})
        await engine.send({"name": "user/approved", "data": {"user_id": "u1"}})  # CEL error: no match, no crash
        await asyncio.sleep(0.2)
        assert (await engine.get_run(run))["status"] == "Running"
        await engine.send({"name": "user/approved", "data": {"user_id": "u1", "amount": 150}})
        out = await engine.wait_for_output(run, timeout=10)
    assert out["data"] == {"user_id": "u1", "amount": 150}


async def test_wait_for_event_times_out_with_none(tmp_path: Path) -> None:
    async with embedded(tmp_path, waiting_app(match="data.user_id", timeout="300ms")) as engine:
        started = time.monotonic()
        ids = await engine.send({"name": "user/signed.up", "data": {"user_id": "u1"}})
        await engine.send({"name": "user/approved", "data": {"user_id": "u2"}})  # not a match
        run = await first_run(engine, ids[0])
        elapsed = time.monotonic() - started
        steps = await engine.get_run_steps(run["run_id"])
    assert run["status"] == "Completed" and run["output"] is None
    assert 0.28 <= elapsed < 3.0
    assert [(s["step_id"], s["kind"], s["status"], s["output"]) for s in steps] == [
        ("approval", "wait", "completed", None)]


async def test_event_sent_just_before_the_wait_registers_is_not_missed(tmp_path: Path) -> None:
    """The window: events received since the start of the call that reached the wait count, even if they
    arrived before the wait was registered. Here the step right before the wait sends the event itself."""
    app = stepflow.App("steps")
    engine_box: list[stepflow.Engine] = []

    @app.function(id="f", trigger=stepflow.event("order/placed"))
    async def f(ctx: Context) -> Any:
        async def notify() -> str:
            sent = await engine_box[0].send({"name": "order/paid", "data": {"order": ctx.event.data["order"]}})
            return sent[0]

        paid_id = await ctx.step.run("request-payment", notify)
        paid = await ctx.step.wait_for_event("paid", event="order/paid", match="data.order", timeout="5s")
        return {"expected": paid_id, "got": paid.id if paid else None}

    async with embedded(tmp_path, app) as engine:
        engine_box.append(engine)
        started = time.monotonic()
        ids = await engine.send({"name": "order/placed", "data": {"order": 7}})
        out = await engine.wait_for_output(ids[0], timeout=10)
    assert out["got"] is not None and out["got"] == out["expected"]
    assert time.monotonic() - started < 4.0  # resolved by the event, not by the timeout


async def test_event_from_before_the_call_is_outside_the_window(tmp_path: Path) -> None:
    """An event received before the call that reached the wait began does not resolve it."""
    async with embedded(tmp_path, waiting_app(match="data.user_id", timeout="300ms")) as engine:
        await engine.send({"name": "user/approved", "data": {"user_id": "u1"}})
        await asyncio.sleep(0.05)
        ids = await engine.send({"name": "user/signed.up", "data": {"user_id": "u1"}})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Completed" and run["output"] is None


async def _run_of(engine: stepflow.Engine, event_id: str) -> str:
    async def started() -> bool:
        return bool(await engine.get_event_runs(event_id))

    await wait_for(started, what=f"a run of event {event_id}")
    return str((await engine.get_event_runs(event_id))[0]["run_id"])


# --- invoke ----------------------------------------------------------------------------------------------


async def test_invoke_returns_the_child_output(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()

    @app.function(id="square", trigger=stepflow.event("math/square"))
    async def square(ctx: Context) -> dict[str, int]:
        calls.hit("square")
        value = await ctx.step.run("compute", lambda x: x * x, ctx.event.data["x"])
        return {"squared": value, "trigger": ctx.event.name}

    @app.function(id="parent", trigger=stepflow.event("math/go"))
    async def parent(ctx: Context) -> list[Any]:
        by_spec = await ctx.step.invoke("by-spec", function=square, data={"x": 3})
        by_id = await ctx.step.invoke("by-id", function="square", data={"x": 4}, timeout="10s")
        return [by_spec, by_id]

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "math/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
        children = await engine.list_runs(function_id="square")
    assert out == [{"squared": 9, "trigger": "inngest/function.invoked"},
                   {"squared": 16, "trigger": "inngest/function.invoked"}]
    assert sorted(r["status"] for r in children) == ["Completed", "Completed"]
    assert calls["square"] >= 2


async def test_invoke_of_a_failing_child_raises_step_error(tmp_path: Path) -> None:
    app = stepflow.App("steps")

    @app.function(id="child", trigger=stepflow.event("t/child"), retries=0)
    async def child(ctx: Context) -> None:
        raise stepflow.NonRetriableError(f"cannot handle {ctx.event.data['x']}")

    @app.function(id="parent", trigger=stepflow.event("t/go"))
    async def parent(ctx: Context) -> dict[str, Any]:
        try:
            await ctx.step.invoke("call-child", function=child, data={"x": "bad input"})
        except StepError as exc:
            return {"caught": True, "step": exc.step_id, "name": exc.error_name, "message": exc.error_message}
        return {"caught": False}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
        children = await engine.list_runs(function_id="child")
    assert out["caught"] is True and out["step"] == "call-child"
    assert out["name"] == "InvokedRunFailed"
    assert "Failed" in out["message"] and "cannot handle bad input" in out["message"]
    assert [r["status"] for r in children] == ["Failed"]


async def test_invoke_timeout_raises_step_error(tmp_path: Path) -> None:
    app = stepflow.App("steps")

    @app.function(id="slow-child", trigger=stepflow.event("t/child"))
    async def child(ctx: Context) -> str:
        await ctx.step.sleep("long", "30s")
        return "late"

    @app.function(id="parent", trigger=stepflow.event("t/go"))
    async def parent(ctx: Context) -> str:
        try:
            return str(await ctx.step.invoke("call", function=child, timeout="300ms"))
        except StepError as exc:
            return exc.error_name

    async with embedded(tmp_path, app) as engine:
        started = time.monotonic()
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "InvokeTimeout"
        assert time.monotonic() - started < 5.0


# --- send_event ------------------------------------------------------------------------------------------


async def test_send_event_returns_ids_and_triggers_other_functions_once(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    received = Calls()

    @app.function(id="sender", trigger=stepflow.event("t/go"))
    async def sender(ctx: Context) -> list[str]:
        ids = await ctx.step.send_event("fan-out", [{"name": "t/item", "data": {"n": n}} for n in (1, 2)])
        await ctx.step.sleep("replay", "100ms")   # the function is called again: send_event must not resend
        return ids

    @app.function(id="receiver", trigger=stepflow.event("t/item"))
    async def receiver(ctx: Context) -> int:
        received.hit(str(ctx.event.data["n"]))
        return int(await ctx.step.run("times-ten", lambda: ctx.event.data["n"] * 10))

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        sent = await engine.wait_for_output(ids[0], timeout=10)
        assert isinstance(sent, list) and len(sent) == 2 and len(set(sent)) == 2
        outputs = []
        for event_id in sent:
            runs = await engine.get_event_runs(event_id)
            assert [r["function_id"] for r in runs] == ["receiver"]
            outputs.append(await engine.wait_for_output(runs[0]["run_id"], timeout=10))
        receivers = await engine.list_runs(function_id="receiver")
    assert outputs == [10, 20]
    assert len(receivers) == 2
    assert set(received) == {"1", "2"}


# --- parallel steps --------------------------------------------------------------------------------------


async def test_parallel_steps_with_gather_each_run_once(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()
    bodies = Calls()

    async def fetch(name: str) -> str:
        calls.hit(name)
        await asyncio.sleep(0.05)
        return name.upper()

    def combine(parts: list[str]) -> str:
        calls.hit("combine")
        return "+".join(parts)

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> str:
        bodies.hit("f")
        parts = await asyncio.gather(*(ctx.step.run(f"fetch-{n}", fetch, n) for n in ("a", "b", "c")))
        return await ctx.step.run("combine", combine, list(parts))

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "A+B+C"
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = await engine.get_run_steps(run["run_id"])
    assert dict(calls) == {"a": 1, "b": 1, "c": 1, "combine": 1}
    assert {s["step_id"]: s["output"] for s in steps} == {"fetch-a": "A", "fetch-b": "B", "fetch-c": "C",
                                                          "combine": "A+B+C"}
    assert all(s["status"] == "completed" and s["attempts"] == 1 for s in steps)
    assert bodies["f"] >= 3  # the function really was replayed


async def test_parallel_step_failing_once_is_retried_alone(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()

    def work(name: str) -> str:
        if calls.hit(name) == 1 and name == "flaky":
            raise RuntimeError("transient")
        return name

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> list[str]:
        return list(await asyncio.gather(ctx.step.run("steady", work, "steady"),
                                         ctx.step.run("flaky", work, "flaky")))

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == ["steady", "flaky"]
    assert dict(calls) == {"steady": 1, "flaky": 2}


async def test_repeated_step_ids_are_numbered(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()

    def bump(i: int) -> int:
        calls.hit(str(i))
        return i

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> list[int]:
        out = []
        for i in range(3):
            out.append(await ctx.step.run("item", bump, i))
            await ctx.step.sleep("pause", "50ms")
        return out

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == [0, 1, 2]
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = await engine.get_run_steps(run["run_id"])
    assert [s["step_id"] for s in steps] == ["item", "pause", "item:1", "pause:1", "item:2", "pause:2"]
    assert dict(calls) == {"0": 1, "1": 1, "2": 1}


# --- steps on other runtimes -----------------------------------------------------------------------------


async def test_http_step_runs_on_a_step_server_with_the_step_contract(tmp_path: Path, step_server: StepServer) -> None:
    app = stepflow.App("steps")

    async def score(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        return web.json_response({"status": 200, "body": {"score": payload["data"]["n"] * 10,
                                                          "saw": sorted(payload["steps"])}})

    async def reject(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        return web.json_response({"status": 422, "body": {"error": "bad input"}})

    score_url = step_server.route("/score", score)
    reject_url = step_server.route("/reject", reject)

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> dict[str, Any]:
        prepared = await ctx.step.run("prepare", lambda: 4)
        scored = await ctx.step.http("score", url=score_url, data={"n": prepared})
        try:
            await ctx.step.http("reject", url=reject_url, data={})
        except StepError as exc:
            return {"scored": scored, "rejected": exc.error_name, "status": exc.details.get("status")}
        return {"scored": scored}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
    assert out == {"scored": {"score": 40, "saw": ["prepare"]}, "rejected": "StepError", "status": 422}
    call = step_server.calls["/score"][0]
    assert call["ctx"]["step_id"] == "score" and call["steps"]["prepare"] == {"status": 200, "body": 4}
    assert len(step_server.calls["/reject"]) == 1   # 4xx: not retried


async def test_http_step_5xx_is_retried(tmp_path: Path, step_server: StepServer) -> None:
    app = stepflow.App("steps")
    answers = iter([500, 503, 200])

    async def flaky(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        status = next(answers)
        return web.json_response({"status": status, "body": "ok" if status == 200 else "down"})

    url = step_server.route("/flaky", flaky)

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> Any:
        return await ctx.step.http("flaky", url=url)

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "ok"
    assert len(step_server.calls["/flaky"]) == 3


async def test_falsy_step_values_are_memoized_too(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()

    def value(kind: str) -> Any:
        calls.hit(kind)
        return {"none": None, "false": False, "zero": 0, "empty": "", "list": []}[kind]

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> list[Any]:
        out = [await ctx.step.run(kind, value, kind) for kind in ("none", "false", "zero", "empty", "list")]
        await ctx.step.sleep("replay", "20ms")
        return out

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == [None, False, 0, "", []]
    assert dict(calls) == {"none": 1, "false": 1, "zero": 1, "empty": 1, "list": 1}


async def test_parallel_sleeps_overlap(tmp_path: Path) -> None:
    app = stepflow.App("steps")

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> float:
        start = await ctx.step.run("start", time.time)
        await asyncio.gather(ctx.step.sleep("short", "300ms"), ctx.step.sleep("long", "600ms"))
        return await ctx.step.run("end", time.time) - start

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        elapsed = await engine.wait_for_output(ids[0], timeout=10)
    assert 0.58 <= elapsed < 0.85   # together, not one after the other (0.9 s)


async def test_parallel_step_failing_for_good_raises_in_gather(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()

    def ok(name: str) -> str:
        calls.hit(name)
        return name

    def broken() -> str:
        calls.hit("broken")
        raise stepflow.NonRetriableError("broken for good")

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> dict[str, Any]:
        results = await asyncio.gather(ctx.step.run("ok-1", ok, "ok-1"), ctx.step.run("broken", broken),
                                       ctx.step.run("ok-2", ok, "ok-2"), return_exceptions=True)
        return {"ok": [r for r in results if isinstance(r, str)],
                "errors": [r.step_id for r in results if isinstance(r, StepError)]}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == {"ok": ["ok-1", "ok-2"], "errors": ["broken"]}
    assert dict(calls) == {"ok-1": 1, "broken": 1, "ok-2": 1}


async def test_one_event_resolves_every_run_waiting_for_it(tmp_path: Path) -> None:
    app = waiting_app(timeout="10s")
    async with embedded(tmp_path, app) as engine:
        first = await engine.send({"name": "user/signed.up", "data": {"user_id": "a"}})
        second = await engine.send({"name": "user/signed.up", "data": {"user_id": "b"}})
        runs = [await _run_of(engine, first[0]), await _run_of(engine, second[0])]
        for run in runs:
            await wait_registered(engine, run)
        approved = await engine.send({"name": "user/approved", "data": {"all": True}})
        outputs = [await engine.wait_for_output(run, timeout=10) for run in runs]
    assert [o["id"] for o in outputs] == [approved[0], approved[0]]
