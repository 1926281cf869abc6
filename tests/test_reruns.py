"""Reruns (`POST /v2/runs/{id}/rerun`, `Client.rerun`, `Engine.rerun`): a new run of the function's current
version for the same event, linked to the original; from a step, the results before it are kept, not re-run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
from aiohttp import web
from conftest import RunningServer, StepServer, workflow_config
from test_sdk_support import Calls, embedded, first_run, wait_ended

import stepflow
from stepflow import Context
from stepflow.errors import ConflictError, NotFoundError
from stepflow.ids import new_ulid
from stepflow.server.openapi import INNGEST_RUN_SCHEMA


async def test_rerun_repeats_a_failed_run_for_the_same_event(stepflow: RunningServer, step_server: StepServer) -> None:
    answers: Iterator[tuple[int, dict[str, Any]]] = iter([(400, {"error": "bad month"}), (200, {"total": 12})])

    async def flaky(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        status, body = next(answers)
        return web.json_response(body, status=status)

    url = step_server.route("/s", flaky)
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}))
    event_id = (await stepflow.client.send({"name": "test/go", "data": {"month": 11}}))[0]
    first = await first_run(stepflow.client, event_id)
    assert first["status"] == "Failed"

    rerun = await stepflow.client.rerun(first["run_id"])
    assert rerun["run_id"] != first["run_id"] and rerun["original_run_id"] == first["run_id"]
    assert rerun["event_id"] == event_id and rerun["function_id"] == "wf"
    done = await stepflow.client.wait_for_run(rerun["run_id"], timeout=15)
    assert done["status"] == "Completed" and done["original_run_id"] == first["run_id"]
    # the same event reached the step both times; the original run is left as it was
    assert [c["event"]["data"] for c in step_server.calls["/s"]] == [{"month": 11}, {"month": 11}]
    assert (await stepflow.client.get_run(first["run_id"]))["status"] == "Failed"
    assert {r["run_id"] for r in await stepflow.client.get_event_runs(event_id)} == {first["run_id"], rerun["run_id"]}
    # v2: the strict InngestRun has no room for the link; its extended form carries it (and the error)
    async with aiohttp.ClientSession() as http:
        for url in (f"{stepflow.url}/v2/runs/{rerun['run_id']}", f"{stepflow.url}/v2/runs",
                    f"{stepflow.url}/v2/events/{event_id}/runs"):
            async with http.get(url) as resp:
                strict = (await resp.json())["data"]
            for run in strict if isinstance(strict, list) else [strict]:
                jsonschema.validate(run, INNGEST_RUN_SCHEMA)
                assert "original_run_id" not in run
            async with http.get(url, params={"extended": "true"}) as resp:
                extended = (await resp.json())["data"]
            by_id = {r["run_id"]: r for r in (extended if isinstance(extended, list) else [extended])}
            assert by_id[rerun["run_id"]]["original_run_id"] == first["run_id"]
            assert by_id[rerun["run_id"]]["function_version"] == 1 and "created_at" in by_id[rerun["run_id"]]
            if first["run_id"] in by_id:
                assert "original_run_id" not in by_id[first["run_id"]]
                assert by_id[first["run_id"]]["error"]["body"] == {"error": "bad month"}
        async with http.get(f"{stepflow.url}/v2/runs", params={"extended": "yes"}) as resp:
            assert resp.status == 400 and "'extended' must be true or false" in (await resp.json())["error"]["message"]


async def test_workflow_rerun_from_a_step_keeps_its_ancestors(stepflow: RunningServer,
                                                               step_server: StepServer) -> None:
    fail_c = [True]

    async def c(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        if fail_c[0]:
            return web.json_response({"error": "no"}, status=422)
        return web.json_response({"c": "ok"})

    http = step_server.json
    await stepflow.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": http("/a", {"a": 1})}},
        "b": {"runtime": {"type": "http", "url": http("/b", {"b": 2})}, "after": ["a"]},
        "c": {"runtime": {"type": "http", "url": step_server.route("/c", c)}, "after": ["b"]},
    }))
    event_id = (await stepflow.client.send({"name": "test/go", "data": {}}))[0]
    first = await first_run(stepflow.client, event_id)
    assert first["status"] == "Failed"

    fail_c[0] = False
    rerun = await stepflow.client.rerun(first["run_id"], from_step="c")
    done = await stepflow.client.wait_for_run(rerun["run_id"], timeout=15)
    assert done["status"] == "Completed"
    # a and b ran once (in the first run); their results were kept, and c saw them
    assert len(step_server.calls["/a"]) == 1 and len(step_server.calls["/b"]) == 1 and len(step_server.calls["/c"]) == 2
    assert step_server.calls["/c"][1]["steps"]["b"]["body"] == {"b": 2}
    steps = {s["step_id"]: s for s in await stepflow.client.get_run_steps(rerun["run_id"])}
    assert {k: (s["status"], s["output"]["body"]) for k, s in steps.items()} == {
        "a": ("completed", {"a": 1}), "b": ("completed", {"b": 2}), "c": ("completed", {"c": "ok"})}

    # from a root: nothing is kept, everything runs again
    again = await stepflow.client.rerun(first["run_id"], from_step="a")
    assert (await stepflow.client.wait_for_run(again["run_id"], timeout=15))["status"] == "Completed"
    assert len(step_server.calls["/a"]) == 2 and len(step_server.calls["/b"]) == 2


async def test_rerun_refusals_say_why(stepflow: RunningServer, step_server: StepServer) -> None:
    await stepflow.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": step_server.json("/a", {"error": "no"}, status=422)}},
        "b": {"runtime": {"type": "http", "url": step_server.json("/b", {})}, "after": ["a"]},
    }))
    first = await first_run(stepflow.client, (await stepflow.client.send({"name": "test/go", "data": {}}))[0])
    runs_before = len((await stepflow.client.list_runs())["data"])
    async with aiohttp.ClientSession() as http:
        base = f"{stepflow.url}/v2/runs"
        cases = [
            (f"{base}/{new_ulid()}/rerun", {}, 404, "not found"),
            (f"{base}/{first['run_id']}/rerun", {"from_step": "zz"}, 404, "has no step 'zz'"),
            (f"{base}/{first['run_id']}/rerun", {"from_step": "b"}, 409, "never ran"),
            (f"{base}/{first['run_id']}/rerun", {"from_step": 3}, 400, "expected"),
            (f"{base}/{first['run_id']}/rerun", {"other": 1}, 400, "expected"),
        ]
        for url, body, status, needle in cases:
            async with http.post(url, json=body) as resp:
                answer = await resp.json()
                assert resp.status == status, (body, answer)
                assert needle in answer["error"]["message"], (body, answer)
        async with http.post(f"{base}/{first['run_id']}/rerun", data=b"{nope") as resp:
            assert resp.status == 400 and "not JSON" in (await resp.json())["error"]["message"]
    assert len((await stepflow.client.list_runs())["data"]) == runs_before  # no refusal made a run


async def test_code_function_rerun_from_a_step_replays_the_steps_before_it(tmp_path: Path) -> None:
    app = stepflow.App("reruns")
    calls = Calls()
    broken = [True]

    def fetch() -> int:
        calls.hit("fetch")
        return 20

    def charge(n: int) -> int:
        calls.hit("charge")
        if broken[0]:
            raise stepflow.NonRetriableError("card declined")
        return n + 1

    def email(n: int) -> str:
        calls.hit("email")
        return f"sent {n}"

    @app.function(id="order", trigger=stepflow.event("t/order"))
    async def order(ctx: Context) -> str:
        n = await ctx.step.run("fetch", fetch)
        total = await ctx.step.run("charge", charge, n)
        return await ctx.step.run("email", email, total)

    async with embedded(tmp_path, app) as engine:
        event_ids = await engine.send({"name": "t/order", "data": {}})
        first = await first_run(engine, event_ids[0])
        assert first["status"] == "Failed"
        assert dict(calls) == {"fetch": 1, "charge": 1}

        # a step the run never reached is not a starting point: a code function's steps are known once they ran
        try:
            await engine.rerun(first["run_id"], from_step="email")
        except NotFoundError as exc:
            assert "has no step 'email'" in str(exc) and "'charge'" in str(exc) and "'fetch'" in str(exc)
        else:
            raise AssertionError("rerun from a step that never ran was accepted")

        broken[0] = False
        rerun = await engine.rerun(first["run_id"], from_step="charge")
        assert rerun["original_run_id"] == first["run_id"]
        done = await wait_ended(engine, rerun["run_id"])
        assert done["status"] == "Completed" and done["output"] == "sent 21"
        # fetch was kept (replayed from its stored result), charge and email ran in the rerun
        assert dict(calls) == {"fetch": 1, "charge": 2, "email": 1}
        steps = {s["step_id"]: s["output"] for s in await engine.get_run_steps(rerun["run_id"])}
        assert steps["fetch"] == 20 and steps["charge"] == 21 and steps["email"] == "sent 21"


async def test_a_running_run_cannot_be_rerun(tmp_path: Path) -> None:
    app = stepflow.App("reruns")

    @app.function(id="slow", trigger=stepflow.event("t/slow"))
    async def slow(ctx: Context) -> None:
        await ctx.step.sleep("nap", "1h")

    async with embedded(tmp_path, app) as engine:
        event_ids = await engine.send({"name": "t/slow", "data": {}})
        while not (runs := await engine.get_event_runs(event_ids[0])):
            await asyncio.sleep(0.01)
        try:
            await engine.rerun(runs[0]["run_id"])
        except ConflictError as exc:
            assert "only a run that has ended can be rerun" in str(exc)
        else:
            raise AssertionError("a running run was rerun")
        await engine.cancel(runs[0]["run_id"])
        rerun = await engine.rerun(runs[0]["run_id"])
        assert rerun["status"] in ("Queued", "Running") and rerun["original_run_id"] == runs[0]["run_id"]


async def test_a_rerun_is_not_stopped_by_the_functions_idempotency_key(tmp_path: Path) -> None:
    """Idempotency deduplicates events; a rerun is an explicit ask for one more run of the same event."""
    app = stepflow.App("reruns")
    calls = Calls()

    @app.function(id="welcome", trigger=stepflow.event("user/created"), idempotency="event.data.user")
    async def welcome(ctx: Context) -> int:
        return await ctx.step.run("mail", lambda: calls.hit("mail"))

    async with embedded(tmp_path, app) as engine:
        first = await first_run(engine, (await engine.send({"name": "user/created", "data": {"user": "u1"}}))[0])
        rerun = await engine.rerun(first["run_id"])
        assert (await wait_ended(engine, rerun["run_id"]))["output"] == 2
        assert calls["mail"] == 2
