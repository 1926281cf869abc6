"""Traces kept with the run (`GET /v2/runs/{id}/trace`): a root span for the run, a child span per step attempt
and code-function call, sleeps as spans; the W3C `traceparent` each step receives names the attempt's span; a
`traceparent` on `POST /e/` makes the run a child of the sender's trace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from conftest import RunningServer, ServerFactory, StepServer, workflow_config
from test_sdk_support import embedded, first_run

import stepflow
from stepflow.engine import EngineConfig
from stepflow.observability.tracing import root_span_id

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


async def trace_of(stepflow: RunningServer, run_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{stepflow.url}/v2/runs/{run_id}/trace") as resp:
        assert resp.status == 200, await resp.text()
        return dict((await resp.json())["data"])


async def test_a_workflow_runs_trace_and_the_traceparent_its_steps_saw(stepflow: RunningServer,
                                                                       step_server: StepServer) -> None:
    calls = {"b": 0}

    async def b(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        calls["b"] += 1
        return web.json_response({}, status=503 if calls["b"] == 1 else 200)

    ok = step_server.json("/ok", {})
    await stepflow.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": ok}},
        "b": {"runtime": {"type": "http", "url": step_server.route("/b", b)}, "after": ["a"]},
        "c": {"runtime": {"type": "http", "url": ok}, "after": ["b"]}}, id="traced", event="t/go"))
    [event_id] = await stepflow.client.send({"name": "t/go", "data": {}})
    [run] = await stepflow.client.get_event_runs(event_id)
    done = await stepflow.client.wait_for_run(run["run_id"], timeout=20)
    assert done["status"] == "Completed"
    trace = await trace_of(stepflow, run["run_id"])
    root = trace["root"]
    assert TRACEPARENT.match(f"00-{trace['trace_id']}-{root['span_id']}-01")
    assert root["span_id"] == root_span_id(run["run_id"]) and root["name"] == "run traced"
    assert root["attributes"]["run.id"] == run["run_id"] and root["status"] == "ok" and root["end"] is not None
    children = root["children"]
    assert [(c["name"], c["status"], c["attributes"]["attempt"]) for c in children] == [
        ("step a", "ok", 1), ("step b", "error", 1), ("step b", "ok", 2), ("step c", "ok", 1)]
    assert children[1]["attributes"]["outcome"] == "5xx" and "retry.in_ms" in children[1]["attributes"]
    assert all(c["parent_id"] == root["span_id"] and c["attributes"]["runtime"] == "http" for c in children)
    assert trace["span_count"] == 5
    # every attempt's request carried the trace, naming the attempt's own span
    seen = [TRACEPARENT.match(h["traceparent"]) for path in ("/ok", "/b") for h in step_server.headers[path]]
    assert all(m is not None and m.group(1) == trace["trace_id"] for m in seen)
    assert sorted(m.group(2) for m in seen if m) == sorted(c["span_id"] for c in children)
    # and the Input's ctx too (the runtimes without headers read it there)
    assert all(TRACEPARENT.match(call["ctx"]["traceparent"]) for call in step_server.calls["/ok"])


async def test_a_traceparent_on_post_e_makes_the_run_a_child_of_the_senders_trace(
        stepflow: RunningServer, step_server: StepServer) -> None:
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.json("/ok", {})}}},
                                            id="child", event="t/child"))
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with aiohttp.ClientSession() as http:
        for header in (f"00-{trace_id}-{span_id}-01", "not-a-traceparent"):
            async with http.post(f"{stepflow.url}/e/any", json={"name": "t/child", "data": {}},
                                 headers={"traceparent": header}) as resp:
                [event_id] = (await resp.json())["ids"]
            [run] = await stepflow.client.get_event_runs(event_id)
            await stepflow.client.wait_for_run(run["run_id"], timeout=20)
            trace = await trace_of(stepflow, run["run_id"])
            if header.startswith("00-"):
                assert trace["trace_id"] == trace_id and trace["root"]["parent_id"] == span_id
                sent = step_server.headers["/ok"][-1]["traceparent"]
                assert sent.startswith(f"00-{trace_id}-")
            else:  # an invalid one is ignored: the run has a trace of its own
                assert trace["trace_id"] != trace_id and trace["root"]["parent_id"] is None


async def test_an_sdk_functions_calls_and_sleeps_are_spans(tmp_path: Path) -> None:
    app = stepflow.App("traced")

    @app.function(id="napper", trigger=stepflow.event("t/nap"))
    async def napper(ctx: stepflow.Context) -> str:
        await ctx.step.run("before", lambda: 1)
        await ctx.step.sleep("nap", "50ms")
        return await ctx.step.run("after", lambda: "done")

    async with embedded(tmp_path, app) as engine:
        [event_id] = await engine.send({"name": "t/nap", "data": {}})
        run = await first_run(engine, event_id, timeout=20)
        assert run["status"] == "Completed"
        spans = await engine.core.store.get_run_spans(run["run_id"])
    names = [s.name for s in spans]
    assert names.count("call") >= 2 and "sleep nap" in names, names
    nap = next(s for s in spans if s.name == "sleep nap")
    assert nap.end is not None and nap.end - nap.start >= 40 and nap.attributes["step.id"] == "nap"
    assert all(s.attributes.get("runtime") == "inprocess" for s in spans if s.name == "call")


async def test_tracing_off_keeps_no_spans_and_sends_no_traceparent(stepflow_factory: ServerFactory,
                                                                   step_server: StepServer) -> None:
    server = await stepflow_factory(config=EngineConfig(backoff_base=0.01, poll_interval=0.2, tracing=False))
    await server.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.json("/ok", {})}}},
                                          id="untraced", event="t/off"))
    [event_id] = await server.client.send({"name": "t/off", "data": {}})
    [run] = await server.client.get_event_runs(event_id)
    await server.client.wait_for_run(run["run_id"], timeout=20)
    trace = await trace_of(server, run["run_id"])
    assert trace["root"]["children"] == [] and trace["span_count"] == 1  # the run alone
    assert "traceparent" not in step_server.headers["/ok"][0]
    assert "traceparent" not in step_server.calls["/ok"][0]["ctx"]

