"""Pausing a function (`POST /v2/functions/{id}/pause` and `/resume`, `Client.pause/resume`, `stepflow functions
pause|resume`): nothing of it executes and nothing is lost; runs show PAUSED and go on in order after resume."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from conftest import RunningServer, StepServer, make_store, workflow_config
from test_bulk_cancel import served
from test_sdk_support import Calls, embedded, first_run, wait_for

import stepflow
from stepflow import Context
from stepflow.server.openapi import INNGEST_RUN_SCHEMA
from stepflow.server.serialize import iso


def flow_app(calls: Calls, gate: asyncio.Event | None = None) -> stepflow.App:
    app = stepflow.App("paused")

    async def first() -> str:
        calls.hit("first")
        if gate is not None:
            await gate.wait()
        return "one"

    @app.function(id="flow", trigger=stepflow.event("p/go"))
    async def flow(ctx: Context) -> str:
        a = await ctx.step.run("first", first)
        if ctx.event.data.get("nap"):
            await ctx.step.sleep("nap", ctx.event.data["nap"])
        b = await ctx.step.run("second", lambda: calls.hit("second-after-nap" if ctx.event.data.get("nap")
                                                           else "second"))
        return f"{a} {b}"

    return app


async def status_of(engine: stepflow.Engine, event_id: str) -> str:
    runs = await engine.get_event_runs(event_id)
    return str(runs[0]["status"]) if runs else "none"


async def wait_status(engine: stepflow.Engine, event_id: str, status: str) -> None:
    async def reached() -> bool:
        return await status_of(engine, event_id) == status

    await wait_for(reached, what=f"the run of {event_id} to be {status}")


async def test_a_paused_function_stores_runs_and_executes_nothing_until_resumed(tmp_path: Path) -> None:
    calls = Calls()
    async with embedded(tmp_path, flow_app(calls)) as engine, served(engine) as client:
        paused = await client.pause("flow")
        assert paused["paused"] is True and paused["runs_paused"] == 0
        assert (await client.pause("flow"))["paused_at"] == paused["paused_at"]  # pausing again changes nothing
        events = [(await engine.send({"name": "p/go", "data": {"n": n}}))[0] for n in range(3)]
        for event_id in events:
            assert await status_of(engine, event_id) == "Paused"
        await asyncio.sleep(0.5)  # workers are running: give them every chance to (wrongly) execute something
        assert dict(calls) == {} and [await status_of(engine, e) for e in events] == ["Paused"] * 3
        run_id = (await engine.get_event_runs(events[0]))[0]["run_id"]
        v2 = (await client._request("GET", f"/v2/runs/{run_id}"))["data"]
        assert v2["status"] == "PAUSED"
        import jsonschema
        jsonschema.validate(v2, INNGEST_RUN_SCHEMA)
        resumed = await client.resume("flow")
        assert resumed == {"function_id": "flow", "paused": False, "runs_resumed": 3}
        for event_id in events:
            await wait_status(engine, event_id, "Completed")
        assert dict(calls) == {"first": 3, "second": 3}


async def test_a_run_in_flight_stops_at_its_next_step_and_a_sleep_due_meanwhile_goes_on_after(
        tmp_path: Path) -> None:
    calls = Calls()
    gate = asyncio.Event()
    async with embedded(tmp_path, flow_app(calls, gate)) as engine, served(engine) as client:
        [executing] = await engine.send({"name": "p/go", "data": {}})
        await wait_for(lambda: asyncio.sleep(0, result=calls["first"] == 1), what="the first step to start")
        [sleeping] = await engine.send({"name": "p/go", "data": {"nap": "0.3s"}})
        await wait_for(lambda: asyncio.sleep(0, result=calls["first"] == 2), what="the second run's first step")
        assert (await client.pause("flow"))["runs_paused"] == 2
        gate.set()  # the steps executing at the pause finish, and are stored
        async def first_stored() -> bool:
            steps = [await engine.get_run_steps((await engine.get_event_runs(e))[0]["run_id"])
                     for e in (executing, sleeping)]
            return all(any(s["step_id"] == "first" and s["status"] == "completed" for s in run) for run in steps)

        await wait_for(first_stored, what="the executing steps to be stored")
        await asyncio.sleep(0.8)  # past the 0.3 s sleep: it falls due while paused
        # The sleeping run stopped at its step boundary: its sleep fell due, nothing after it ran. (A call of a
        # code function executing at the pause runs to its end, as the SDK executes steps inline within one call:
        # the other run may have finished its `second` in that same call.)
        assert calls["second-after-nap"] == 0
        assert await status_of(engine, sleeping) == "Paused"
        await client.resume("flow")
        await wait_status(engine, executing, "Completed")
        await wait_status(engine, sleeping, "Completed")
        assert dict(calls) == {"first": 2, "second": 1, "second-after-nap": 1}  # nothing ran twice


async def test_resume_can_cancel_the_paused_runs_instead(tmp_path: Path) -> None:
    calls = Calls()
    async with embedded(tmp_path, flow_app(calls)) as engine, served(engine) as client:
        await client.pause("flow")
        events = [(await engine.send({"name": "p/go", "data": {}}))[0] for _ in range(2)]
        resumed = await client.resume("flow", cancel_paused=True)
        assert resumed["runs_cancelled"] == 2
        assert [await status_of(engine, e) for e in events] == ["Cancelled", "Cancelled"]
        [later] = await engine.send({"name": "p/go", "data": {}})  # resumed: new runs execute
        await wait_status(engine, later, "Completed")
        assert dict(calls) == {"first": 1, "second": 1}


async def test_a_pause_survives_a_restart(tmp_path: Path) -> None:
    calls = Calls()
    async with embedded(tmp_path, flow_app(calls)) as engine, served(engine) as client:
        await client.pause("flow")
        [before] = await engine.send({"name": "p/go", "data": {}})
    store = await make_store(tmp_path, "embedded")
    await store.open()
    try:
        assert list(await store.paused_functions()) == ["flow"]
    finally:
        await store.close()
    async with embedded(tmp_path, flow_app(calls)) as engine, served(engine) as client:
        [after] = await engine.send({"name": "p/go", "data": {}})
        await asyncio.sleep(0.3)
        assert [await status_of(engine, e) for e in (before, after)] == ["Paused", "Paused"] and not calls
        await client.resume("flow")
        await wait_status(engine, before, "Completed")
        await wait_status(engine, after, "Completed")


async def test_pause_and_resume_refusals(tmp_path: Path) -> None:
    async with embedded(tmp_path, flow_app(Calls())) as engine, served(engine) as client, \
            aiohttp.ClientSession() as http:
        cases: list[tuple[str, Any, int, str]] = [
            ("/v2/functions/nope/pause", {}, 404, "no function 'nope'"),
            ("/v2/functions/nope/resume", {}, 404, "no function 'nope'"),
            ("/v2/functions/flow/resume", {"cancel_paused": "yes"}, 400, "'cancel_paused' must be true or false"),
            ("/v2/functions/flow/resume", {"other": 1}, 400, "expected"),
            ("/v2/functions/flow/pause", {"other": 1}, 400, "expected"),
        ]
        for path, body, status, needle in cases:
            async with http.post(client.base_url + path, json=body) as resp:
                answer = await resp.json()
                assert resp.status == status, (path, body, answer)
                assert needle in answer["error"]["message"], (path, body, answer)
        # resuming a function that is not paused changes nothing
        assert (await client.resume("flow"))["runs_resumed"] == 0


async def test_the_function_list_shows_which_are_paused(tmp_path: Path) -> None:
    async with embedded(tmp_path, flow_app(Calls())) as engine, served(engine) as client:
        [listed] = await client.list_functions()
        assert (listed["id"], listed["paused"], listed["paused_at"], listed["durable_endpoint"]) == (
            "flow", False, None, False)
        paused = await client.pause("flow")
        [listed] = await client.list_functions()
        assert listed["paused"] is True and listed["paused_at"] == iso(paused["paused_at"])
        await client.resume("flow")
        assert (await client.list_functions())[0]["paused"] is False


async def test_a_workflow_in_flight_stops_at_its_next_step(stepflow: RunningServer, step_server: StepServer) -> None:
    gate = asyncio.Event()

    async def slow(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"a": 1})

    await stepflow.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": step_server.route("/a", slow)}},
        "b": {"runtime": {"type": "http", "url": step_server.json("/b", {"b": 2})}, "after": ["a"]},
    }))
    [event_id] = await stepflow.client.send({"name": "test/go", "data": {}})
    await wait_for(lambda: asyncio.sleep(0, result="/a" in step_server.calls), what="step a to start")
    assert (await stepflow.client.pause("wf"))["runs_paused"] == 1
    gate.set()

    async def a_stored() -> bool:
        run_id = (await stepflow.client.get_event_runs(event_id))[0]["run_id"]
        return any(s["step_id"] == "a" and s["status"] == "completed"
                   for s in await stepflow.client.get_run_steps(run_id))

    await wait_for(a_stored, what="step a, executing at the pause, to be stored")
    await asyncio.sleep(0.5)
    assert "/b" not in step_server.calls
    assert (await stepflow.client.get_event_runs(event_id))[0]["status"] == "Paused"
    await stepflow.client.resume("wf")
    run = await first_run(stepflow.client, event_id)
    assert run["status"] == "Completed" and len(step_server.calls["/b"]) == 1
