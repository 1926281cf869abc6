"""OTLP export with the real OpenTelemetry SDK: a test OTLP/HTTP receiver decodes the export with
opentelemetry-proto's own types and finds each ended run's trace — the run's root span and a child per step
attempt — with the trace id the steps received in their `traceparent`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import ServerFactory, StepServer, free_port, workflow_config
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_sdk_support import embedded, first_run

import stepflow


class Receiver:
    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            self.resources.append({a.key: a.value.string_value for a in resource_spans.resource.attributes})
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(status=200, content_type="application/x-protobuf")


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", got.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "stepflow-test")
    yield got
    await runner.cleanup()


async def test_an_ended_runs_trace_is_exported_over_otlp(receiver: Receiver, stepflow_factory: ServerFactory,
                                                         step_server: StepServer) -> None:
    server = await stepflow_factory()  # started with the OTLP variables set
    ok = step_server.json("/ok", {})
    await server.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": ok}},
        "b": {"runtime": {"type": "http", "url": ok}, "after": ["a"]},
        "c": {"runtime": {"type": "http", "url": ok}, "after": ["b"]}}, id="exported", event="o/go"))
    [event_id] = await server.client.send({"name": "o/go", "data": {}})
    [run] = await server.client.get_event_runs(event_id)
    await server.client.wait_for_run(run["run_id"], timeout=20)
    deadline = time.monotonic() + 20
    while len(receiver.spans) < 4:
        assert time.monotonic() < deadline, f"{len(receiver.spans)} span(s) received"
        await asyncio.sleep(0.05)
    spans = {s.name: s for s in receiver.spans}
    root = spans["run exported"]
    assert root.parent_span_id == b""
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["stepflow.run.id"] == run["run_id"] and attributes["stepflow.run.status"] == "Completed"
    steps = [spans[f"step {name}"] for name in "abc"]
    assert all(s.trace_id == root.trace_id and s.parent_span_id == root.span_id for s in steps)
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 0 for s in steps)
    # the trace the steps received is the one exported
    sent = [h["traceparent"] for h in step_server.headers["/ok"]]
    assert {tp.split("-")[1] for tp in sent} == {root.trace_id.hex()}
    assert {tp.split("-")[2] for tp in sent} == {s.span_id.hex() for s in steps}
    assert receiver.resources[0]["service.name"] == "stepflow-test"


async def test_an_unreachable_collector_loses_no_run_and_holds_no_shutdown(
        monkeypatch: pytest.MonkeyPatch, stepflow_factory: ServerFactory, step_server: StepServer) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{free_port()}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    server = await stepflow_factory()
    await server.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.json("/ok", {})}}},
                                          id="alone", event="o/alone"))
    [event_id] = await server.client.send({"name": "o/alone", "data": {}})
    [run] = await server.client.get_event_runs(event_id)
    done = await server.client.wait_for_run(run["run_id"], timeout=20)
    assert done["status"] == "Completed"  # the export's failure touched nothing of the run
    started = time.monotonic()
    await server.engine.stop()
    assert time.monotonic() - started < 10


async def test_http_docker_and_sdk_steps_join_one_exported_trace(
        receiver: Receiver, stepflow_factory: ServerFactory, step_server: StepServer, tmp_path: Path) -> None:
    """A workflow of an HTTP step and a container step, and an SDK function on an embedded engine: each step saw
    its own span's traceparent, and the exported spans link to their run's root."""
    from test_docker_runtime import BUSYBOX, _docker_ready

    reason = await _docker_ready()
    if reason is not None:
        if os.environ.get("STEPFLOW_REQUIRE_DOCKER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = await stepflow_factory()
    await server.register(workflow_config({
        "web": {"runtime": {"type": "http", "url": step_server.json("/ok", {})}},
        "box": {"runtime": {"type": "docker", "image": BUSYBOX, "command": [
            "sh", "-c", 'echo "{\\"seen\\": \\"$TRACEPARENT\\"}"', "step"]}, "after": ["web"]}},
        id="mixed", event="o/mixed"))
    [event_id] = await server.client.send({"name": "o/mixed", "data": {}})
    [run] = await server.client.get_event_runs(event_id)
    assert (await server.client.wait_for_run(run["run_id"], timeout=60))["status"] == "Completed"
    app = stepflow.App("otlp-sdk")

    @app.function(id="sdk-fn", trigger=stepflow.event("o/sdk"))
    async def sdk_fn(ctx: stepflow.Context) -> str:
        return str(await ctx.step.run("one", lambda: "done"))

    async with embedded(tmp_path, app, db="sdk.db") as engine:   # it exports too: the variables are set
        [sdk_event] = await engine.send({"name": "o/sdk", "data": {}})
        assert (await first_run(engine, sdk_event, timeout=20))["status"] == "Completed"
    deadline = time.monotonic() + 20
    while len({s.name for s in receiver.spans} & {"run mixed", "run sdk-fn"}) < 2:
        assert time.monotonic() < deadline, [s.name for s in receiver.spans]
        await asyncio.sleep(0.05)
    by_trace: dict[bytes, list[Any]] = {}
    for span in receiver.spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    mixed = next(spans for spans in by_trace.values() if any(s.name == "run mixed" for s in spans))
    root = next(s for s in mixed if s.name == "run mixed")
    box = next(s for s in mixed if s.name == "step box")
    assert {s.name for s in mixed} == {"run mixed", "step web", "step box"}
    assert all(s.parent_span_id == root.span_id for s in mixed if s is not root)
    steps = await server.client.get_run_steps(run["run_id"])
    seen = next(s for s in steps if s["step_id"] == "box")["output"]["body"]["seen"]
    assert seen == f"00-{root.trace_id.hex()}-{box.span_id.hex()}-01"   # the container's TRACEPARENT
    sdk = next(spans for spans in by_trace.values() if any(s.name == "run sdk-fn" for s in spans))
    sdk_root = next(s for s in sdk if s.name == "run sdk-fn")
    calls = [s for s in sdk if s.name == "call"]
    assert calls and all(s.parent_span_id == sdk_root.span_id for s in calls)
