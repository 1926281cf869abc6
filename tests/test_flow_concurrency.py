"""Concurrency limits (flow control), counted in the store: on PostgreSQL two engines share the database and
together never exceed a limit (on SQLite one engine, with room for many steps at once); keys give each tenant its
own limit, a second limit caps the function, scopes share a limit across functions, and a saturated key's
backlog does not delay other keys (fair key queues)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from conftest import StepServer
from flow_support import Recorder, all_ended, engines, one_step, register, send
from test_sdk_support import embedded, first_run

import stepflow


async def test_a_keyed_limit_holds_across_two_engines(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.15)
    async with engines(tmp_path) as running:
        a, b = running[0], running[-1]
        await register(running, {"id": "limited", **one_step(step_server, recorder, concurrency=[
            {"limit": 2, "key": "event.data.key"}])})
        events = await send(a, *({"key": "acme", "n": n} for n in range(8)), *({"key": "globex", "n": n}
                                                                                  for n in range(4)))
        runs = await all_ended(b, events, 12)
    assert {r.status.value for r in runs} == {"COMPLETED"}
    # each tenant had two steps at once at most, and used both slots (the two engines had room for many more)
    assert dict(recorder.most) == {"acme": 2, "globex": 2}
    assert len(recorder.started) == 12


async def test_a_second_limit_caps_the_whole_function(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.15)
    async with engines(tmp_path) as running:
        a = running[0]
        await register(running, {"id": "capped", **one_step(step_server, recorder, concurrency=[
            {"limit": 2, "key": "event.data.key"}, {"limit": 3}])})
        events = await send(a, *({"key": key, "n": n} for key in ("a", "b", "c") for n in range(4)))
        await all_ended(a, events, 12)
    assert recorder.most_total == 3 and max(recorder.most.values()) <= 2


async def test_scope_all_shares_a_key_between_functions(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.15)
    shared = [{"limit": 1, "key": "event.data.key", "scope": "all"}]
    async with engines(tmp_path) as running:
        a, b = running[0], running[-1]
        for fid in ("one", "two"):
            await register(running, {"id": fid, **one_step(step_server, recorder, path=f"/{fid}",
                                                          concurrency=shared)})
        events = await send(a, *({"key": "db-7", "n": n} for n in range(6)))  # each event: a run of each
        await all_ended(b, events, 12)
    assert recorder.most == {"db-7": 1} and len(recorder.started) == 12


async def test_scope_app_shares_a_key_between_an_apps_functions_only(tmp_path: Path,
                                                                      step_server: StepServer) -> None:
    recorder = Recorder(hold=0.15)
    shared = [{"limit": 1, "key": "event.data.key", "scope": "app"}]
    async with engines(tmp_path) as running:
        for fid, app in (("one", "billing"), ("two", "billing"), ("three", "reports")):
            await register(running, {"id": fid, "app_id": app, **one_step(
                step_server, recorder, path=f"/{fid}", concurrency=shared)})
        events = await send(running[0], *({"key": "k", "n": n} for n in range(4)))  # a run of each function each
        await all_ended(running[-1], events, 12)
    # billing's two functions shared one slot, reports had its own: two steps at once, never three
    assert len(recorder.started) == 12 and recorder.most_total == 2


async def test_a_saturated_key_does_not_delay_other_keys(tmp_path: Path, step_server: StepServer) -> None:
    """Tenant A queues 300 runs with concurrency 1 per key; tenant B's run, sent after them, starts at once."""
    recorder = Recorder(hold=0.02)
    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "fair", **one_step(step_server, recorder, concurrency=[
            {"limit": 1, "key": "event.data.key"}])})
        backlog = await send(engine, *({"key": "A", "n": n} for n in range(300)))
        while not recorder.started:
            await asyncio.sleep(0.01)
        sent_at = time.monotonic()
        a_before = len(recorder.started)
        [b_event] = await send(engine, {"key": "B", "n": 0})
        await all_ended(engine, [b_event], 1)
        [b_started] = [at for at, key, _ in recorder.started if key == "B"]
        a_meanwhile = sum(1 for at, key, _ in recorder.started if key == "A" and sent_at <= at <= b_started)
        # B waited for no more than a claim cycle or two of A's (one step at a time, 20 ms each; bound generous for
        # a loaded machine), not for A's backlog of ~300
        assert a_meanwhile <= 10, (a_before, a_meanwhile)
        assert recorder.most["A"] == 1
        await all_ended(engine, backlog, 300, timeout=120)
    assert recorder.most == {"A": 1, "B": 1}


async def test_an_sdk_functions_calls_hold_its_slots(tmp_path: Path) -> None:
    """A code function declared with `@app.function(concurrency=...)`: its calls (where its steps execute) are
    limited per key; a run sleeping between steps holds no slot."""
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    app = stepflow.App("limited")

    async def work(key: str) -> str:
        running[key] = running.get(key, 0) + 1
        most[key] = max(most.get(key, 0), running[key])
        await asyncio.sleep(0.05)
        running[key] -= 1
        return key

    @app.function(id="tenant-job", trigger=stepflow.event("flow/go"),
                  concurrency={"limit": 1, "key": "event.data.key"})
    async def tenant_job(ctx: stepflow.Context) -> str:
        await ctx.step.run("first", work, ctx.event.data["key"])
        await ctx.step.sleep("nap", "200ms")
        return await ctx.step.run("second", work, ctx.event.data["key"])

    async with embedded(tmp_path, app, concurrency=8) as engine:
        events = [(await engine.send({"name": "flow/go", "data": {"key": key}}))[0]
                  for key in ("a", "a", "a", "b", "b")]
        runs = [await first_run(engine, e, timeout=30) for e in events]
    assert {r["status"] for r in runs} == {"Completed"}
    assert most == {"a": 1, "b": 1}
