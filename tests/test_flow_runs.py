"""Run-level flow control, carried out in the transaction that stores a run (both stores; two engines on
PostgreSQL): throttle (GCRA, FIFO, none dropped), rate limit (skips recorded with the reason), singleton (skip
or cancel), debounce (one run, after the burst, with the last event) and priority."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import RunningServer, StepServer, workflow_config
from flow_support import Recorder, all_ended, engines, one_step, register, runs_of, send
from test_sdk_support import embedded, first_run

import stepflow
from stepflow.store.records import RunStatus


async def test_throttle_spaces_run_starts_and_drops_none(tmp_path: Path, step_server: StepServer) -> None:
    """limit 2 per 2 s with a burst of 1: three start at once, then one a second (period / limit)."""
    recorder = Recorder(hold=0.0)
    async with engines(tmp_path) as running:
        await register(running, {"id": "paced", **one_step(step_server, recorder, throttle={
            "limit": 2, "period": "2s", "burst": 1})})
        sent_at = time.monotonic()
        events = await send(running[0], *({"n": n} for n in range(6)))
        runs = await all_ended(running[-1], events, 6, timeout=30)
    assert {r.status for r in runs} == {RunStatus.COMPLETED}
    offsets = sorted(at - sent_at for at, _, _ in recorder.started)
    assert len(offsets) == 6
    # limit + burst at once (the third well before the fourth, however slow the machine), then one start per
    # second: the 4th no earlier than ~1 s, the 6th no earlier than ~3 s
    assert offsets[3] - offsets[2] >= 0.5, offsets
    assert offsets[3] >= 0.9 and offsets[5] >= 2.9, offsets
    # FIFO: the first three together (in any order: two engines claim them at once), then the others in order
    order = [data["n"] for _, _, data in sorted(recorder.started)]
    assert sorted(order[:3]) == [0, 1, 2] and order[3:] == [3, 4, 5], order


async def test_throttle_keys_are_independent(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.0)
    async with engines(tmp_path) as running:
        await register(running, {"id": "paced", **one_step(step_server, recorder, throttle={
            "limit": 1, "period": "10s", "key": "event.data.key"})})
        sent_at = time.monotonic()
        backlog = await send(running[0], *({"key": "a", "n": n} for n in range(30)))  # a's: one per 10 s
        events = await send(running[0], *({"key": key, "n": 0} for key in ("b", "c")))
        await all_ended(running[0], events, 2, timeout=30)
        assert len(await runs_of(running[0], backlog)) == 30  # queued, none dropped
    # b and c started at once: no key waited for another's period, nor behind a's backlog
    assert sorted(key for at, key, _ in recorder.started if at - sent_at < 2) == ["a", "b", "c"]


async def test_rate_limit_skips_the_excess_and_says_why(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.0)
    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "limited", **one_step(step_server, recorder, rate_limit={
            "limit": 2, "period": "1h", "key": "event.data.key"})})
        events = await send(engine, *({"key": "a", "n": n} for n in range(5)), {"key": "b", "n": 0})
        await asyncio.sleep(0.3)
        runs = {e: await engine.store.get_event_runs(e) for e in events}
        started = [e for e in events if runs[e]]
        assert started == [events[0], events[1], events[5]]   # two of key a, and key b's own allowance
        await all_ended(engine, started, 3)
        skips = await engine.store.get_event_skips(events[2])
        assert [(s["function_id"], s["reason"]) for s in skips] == [("limited", "rate_limit")]
        assert "rate limited" in skips[0]["message"] and "'a'" in skips[0]["message"]
        assert await engine.store.get_event_skips(events[0]) == []


async def test_singleton_skip_keeps_the_active_run(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.5)
    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "single", **one_step(step_server, recorder, singleton={
            "mode": "skip", "key": "event.data.key"})})
        [first] = await send(engine, {"key": "a", "n": 1})
        while not recorder.started:
            await asyncio.sleep(0.01)
        [skipped, other] = await send(engine, {"key": "a", "n": 2}, {"key": "b", "n": 3})
        await all_ended(engine, [first, other], 2)
        assert await engine.store.get_event_runs(skipped) == []
        [skip] = await engine.store.get_event_skips(skipped)
        assert skip["reason"] == "singleton" and "still active" in skip["message"]
        # once the first run ended, the key is free again
        [later] = await send(engine, {"key": "a", "n": 4})
        [run] = await all_ended(engine, [later], 1)
        assert run.status is RunStatus.COMPLETED


async def test_singleton_cancel_replaces_the_active_run(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=1.0)
    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "single", **one_step(step_server, recorder, singleton={"mode": "cancel"})})
        [first] = await send(engine, {"n": 1})
        while not recorder.started:
            await asyncio.sleep(0.01)
        [second] = await send(engine, {"n": 2})
        [old, new] = await all_ended(engine, [first, second], 2)
    assert old.status is RunStatus.CANCELLED and old.error is not None and old.error["code"] == "singleton"
    assert new.status is RunStatus.COMPLETED and new.output == {"n": 2}


async def test_debounce_starts_one_run_with_the_last_event(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.0)
    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "settle", **one_step(step_server, recorder, debounce={
            "period": "1s", "key": "event.data.key"})})
        burst = []
        for n in range(4):
            burst += await send(engine, {"key": "a", "n": n})
            await asyncio.sleep(0.2)
        [other] = await send(engine, {"key": "b", "n": 9})
        last_sent = time.monotonic()
        await asyncio.sleep(0.5)
        assert recorder.started == []  # still within the period after the last event
        [run] = await all_ended(engine, [burst[-1]], 1)
        await all_ended(engine, [other], 1)
        assert run.output == {"n": 3} and run.event_id == burst[-1]
        a_starts = [at for at, key, _ in recorder.started if key == "a"]
        assert len(a_starts) == 1 and a_starts[0] - last_sent >= 0.5
        for earlier in burst[:-1]:
            assert await engine.store.get_event_runs(earlier) == []
            [skip] = await engine.store.get_event_skips(earlier)
            assert skip["reason"] == "debounce" and run.id in skip["message"]
        # a new burst after the run started makes a new run
        [again] = await send(engine, {"key": "a", "n": 5})
        [second] = await all_ended(engine, [again], 1)
        assert second.id != run.id and second.output == {"n": 5}


async def test_debounce_timeout_bounds_the_wait(tmp_path: Path, step_server: StepServer) -> None:
    recorder = Recorder(hold=0.0)
    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "settle", **one_step(step_server, recorder, debounce={
            "period": "1s", "timeout": "2s"})})
        first_sent = time.monotonic()
        events: list[str] = []
        while time.monotonic() - first_sent < 3.5:  # an endless burst: an event every 0.3 s
            events += await send(engine, {"n": len(events)})
            if recorder.started:
                break
            await asyncio.sleep(0.3)
        assert recorder.started, "the timeout did not start the run"
        # the timeout (2 s) started it, not the end of the burst (which never came: that would be >= 4.5 s)
        assert 1.8 <= recorder.started[0][0] - first_sent <= 4.2


async def test_priority_moves_runs_ahead_in_a_backlog(tmp_path: Path, step_server: StepServer) -> None:
    """One slot (concurrency 1); 20 standard runs wait; a priority-120 run sent last starts next."""
    recorder = Recorder(hold=0.05)
    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "ranked", **one_step(step_server, recorder, concurrency=1, priority={
            "run": "event.data.vip ? 120 : 0"})})
        backlog = await send(engine, *({"vip": False, "n": n} for n in range(20)))
        while not recorder.started:
            await asyncio.sleep(0.01)
        [vip] = await send(engine, {"vip": True, "n": 99})
        await all_ended(engine, [*backlog, vip], 21)
    order = [data["n"] for _, _, data in sorted(recorder.started)]
    assert order.index(99) <= 3, order   # ahead of the ~18 standard runs still waiting
    assert recorder.most_total == 1


async def test_invalid_flow_control_is_refused_naming_the_field(tmp_path: Path, step_server: StepServer) -> None:
    from stepflow.definitions import parse_function
    from stepflow.errors import DefinitionError

    recorder = Recorder()
    base = {"id": "bad", **one_step(step_server, recorder)}
    for extra, needle in (({"concurrency": [{"limit": 0}]}, "'concurrency.limit' must be a whole number"),
                          ({"throttle": {"limit": 1, "period": "2w"}}, "'throttle.period' must be between"),
                          ({"rate_limit": {"limit": 1}}, "'rate_limit.period' is required"),
                          ({"singleton": {"mode": "newest"}}, "'singleton.mode' must be one of skip, cancel"),
                          ({"debounce": {"period": "10s", "timeout": "5s"}}, "'debounce.timeout' (5s)"),
                          ({"priority": {"run": "event.data."}}, "'priority.run' is not a valid expression"),
                          ({"concurrency": [{"limit": 1, "key": "event.data.k", "scope": "tenant"}]},
                           "'concurrency.scope' must be one of function, app, all")):
        try:
            parse_function({**base, **extra})
        except DefinitionError as exc:
            assert needle in str(exc), (extra, str(exc))
        else:
            raise AssertionError(f"accepted {extra}")


async def test_a_waiting_run_says_why(stepflow: RunningServer, step_server: StepServer) -> None:
    gate = asyncio.Event()

    async def slow(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({})

    url = step_server.route("/slow", slow)
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="slot", event="w/slot",
                                            concurrency=[{"limit": 1, "key": "event.data.tenant"}]))
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="paced",
                                            event="w/paced", throttle={"limit": 1, "period": "1h"}))
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="calm",
                                            event="w/calm", debounce={"period": "1h"}))
    client = stepflow.client
    first, second = [await client.send({"name": "w/slot", "data": {"tenant": "tenant-7"}}) for _ in range(2)]
    throttled = [await client.send({"name": "w/paced", "data": {}}) for _ in range(2)][1]
    debounced = await client.send({"name": "w/calm", "data": {}})

    async def run_of(event_ids: list[str]) -> dict[str, Any]:
        while not (runs := await client.get_event_runs(event_ids[0])):
            await asyncio.sleep(0.02)
        return await client.get_run(runs[0]["run_id"])

    try:
        await run_of(first)
        while "/slow" not in step_server.calls:
            await asyncio.sleep(0.02)
        waiting = await run_of(second)
        assert waiting["status"] == "Queued" and waiting["waiting"] == 'concurrency key "tenant-7" (1/1)', waiting
        [step] = await client.get_run_steps(waiting["run_id"])
        assert step["waiting"] == 'concurrency key "tenant-7" (1/1)'
        held = await run_of(throttled)
        assert held["waiting"].startswith("throttled until 20"), held
        calm = await run_of(debounced)
        assert calm["waiting"].startswith("debouncing until 20"), calm
    finally:
        gate.set()
    done = await client.wait_for_run(waiting["run_id"], timeout=15)
    assert done["status"] == "Completed" and "waiting" not in done


async def test_an_event_shows_the_functions_it_skipped_and_why(stepflow: RunningServer,
                                                               step_server: StepServer) -> None:
    url = step_server.json("/ok", {})
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="once-an-hour",
                                            event="w/ping", rate_limit={"limit": 1, "period": "1h"}))
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="always",
                                            event="w/ping"))
    first, second = [(await stepflow.client.send({"name": "w/ping", "data": {}}))[0] for _ in range(2)]
    shown = await stepflow.client.get_event(second)
    [skip] = shown["skipped"]
    assert (skip["function_id"], skip["reason"]) == ("once-an-hour", "rate_limit") and skip["at"].endswith("Z")
    assert (await stepflow.client.get_event(first))["skipped"] == []
    runs = await stepflow.client.get_event_runs(second)
    assert [r["function_id"] for r in runs] == ["always"]  # the other function ran as usual


async def test_batching_collects_events_into_one_run(tmp_path: Path, step_server: StepServer) -> None:
    """max_size 3: six events make two full runs at once, each step Input holding its three events in order;
    a seventh waits for the timeout and runs alone."""
    seen: list[list[int]] = []

    async def batch(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        numbers = [e["data"]["n"] for e in payload["events"]]
        assert payload["event"] == payload["events"][0]
        seen.append(numbers)
        return web.json_response({"count": len(numbers)})

    async with engines(tmp_path) as running:
        engine = running[0]
        await register(running, {"id": "bulk", "triggers": [{"event": "flow/go"}], "batch_events": {
            "max_size": 3, "timeout": "2s", "key": "event.data.key"},
            "steps": {"s": {"runtime": {"type": "http", "url": step_server.route("/batch", batch)}}}})
        events: list[str] = []
        for n in range(6):
            events += await send(engine, {"key": "a", "n": n})
        sent_at = time.monotonic()
        runs = await all_ended(engine, events, 6, timeout=10)   # each event lists the run it joined
        assert len({r.id for r in runs}) == 2 and time.monotonic() - sent_at < 1.8  # full: no timeout waited
        assert sorted(seen) == [[0, 1, 2], [3, 4, 5]]
        [late] = await send(engine, {"key": "a", "n": 6})
        [alone] = await all_ended(engine, [late], 1, timeout=10)
        assert seen[-1] == [6] and alone.output == {"count": 1}
        assert time.monotonic() - sent_at >= 1.9  # it waited for the timeout


async def test_batching_if_leaves_events_out_and_a_waiting_batch_says_so(stepflow: RunningServer,
                                                                         step_server: StepServer) -> None:
    await stepflow.register(workflow_config(
        {"s": {"runtime": {"type": "http", "url": step_server.json("/ok", {})}}}, id="bulk", event="w/b",
        batch_events={"max_size": 100, "timeout": "60s", "if": "event.data.batch"}))
    client = stepflow.client
    waiting = [(await client.send({"name": "w/b", "data": {"batch": True}}))[0] for _ in range(2)]
    [alone] = await client.send({"name": "w/b", "data": {"batch": False}})
    done = await client.wait_for_output(alone, timeout=10)  # not batched: runs at once
    assert done == {}
    [run] = await client.get_event_runs(waiting[1])
    assert run["run_id"] == (await client.get_event_runs(waiting[0]))[0]["run_id"]
    shown = await client.get_run(run["run_id"])
    assert shown["status"] == "Queued" and shown["waiting"].startswith("batching 2/100 until 20"), shown
    await client.cancel(run["run_id"])


async def test_an_sdk_function_gets_its_batch_as_ctx_events(tmp_path: Path) -> None:
    app = stepflow.App("batched")
    seen: list[list[int]] = []

    @app.function(id="bulk", trigger=stepflow.event("flow/bulk"), batch_events={"max_size": 4, "timeout": "5s"})
    async def bulk(ctx: stepflow.Context) -> int:
        numbers = [e.data["n"] for e in ctx.events]
        seen.append(numbers)
        return await ctx.step.run("sum", lambda: sum(numbers))

    async with embedded(tmp_path, app) as engine:
        events = [(await engine.send({"name": "flow/bulk", "data": {"n": n}}))[0] for n in range(4)]
        run = await first_run(engine, events[0], timeout=10)
        assert run["output"] == 6 and [r["run_id"] for r in await engine.get_event_runs(events[3])] == [
            run["run_id"]]
    assert seen and all(numbers == [0, 1, 2, 3] for numbers in seen)
