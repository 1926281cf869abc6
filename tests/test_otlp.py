"""OTLP export with the real OpenTelemetry SDK: a test OTLP/HTTP receiver decodes the export with
opentelemetry-proto's own types and finds each ended run's trace — the run's root span and a child per step
attempt — with the trace id the steps received in their `traceparent`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from conftest import ServerFactory, StepServer, free_port, workflow_config
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


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
