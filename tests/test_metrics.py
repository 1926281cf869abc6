"""`GET /metrics` (Prometheus text format), parsed with prometheus-client's own parser, its counters checked
against the runs made: events, runs started and ended by function and status, step attempts by runtime and
outcome, retries, durations, store transactions, the queue; behind the signing key in `serve`, open on the
`--metrics-bind` listener, and on a worker's `--metrics-port`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import POSTGRES_URL, RunningServer, ServerFactory, StepServer, free_port, workflow_config
from process_support import StepflowProcess, serve_and_workers
from prometheus_client.parser import text_string_to_metric_families

from stepflow.engine import EngineConfig
from stepflow.server import ServerSettings

SK = "signkey-test-" + "9e" * 32


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}, from the exposition text."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                                          float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


async def test_metrics_count_the_runs_made(stepflow: RunningServer, step_server: StepServer) -> None:
    flaky_calls = 0

    async def flaky(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        nonlocal flaky_calls
        flaky_calls += 1
        return web.json_response({}, status=503 if flaky_calls == 1 else 200)

    ok = step_server.json("/ok", {"ok": True})
    await stepflow.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": ok}},
        "b": {"runtime": {"type": "http", "url": step_server.route("/flaky", flaky)}, "after": ["a"]},
        "c": {"runtime": {"type": "http", "url": ok}, "after": ["b"]}}, id="three", event="m/three"))
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.json(
        "/refuse", {}, status=400)}}}, id="refused", event="m/refused"))
    before = await scrape(stepflow.url)
    three = [(await stepflow.client.send({"name": "m/three", "data": {}}))[0] for _ in range(3)]
    [refused] = await stepflow.client.send({"name": "m/refused", "data": {}})
    for event_id in [*three, refused]:
        [run] = await stepflow.client.get_event_runs(event_id)
        await stepflow.client.wait_for_run(run["run_id"], timeout=20)
    after = await scrape(stepflow.url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("stepflow_events_received_total") == 4
    assert grew("stepflow_runs_started_total", function="three") == 3
    assert grew("stepflow_runs_ended_total", function="three", status="Completed") == 3
    assert grew("stepflow_runs_ended_total", function="refused", status="Failed") == 1
    assert grew("stepflow_run_duration_seconds_count", function="three", status="Completed") == 3
    # 3 runs × 3 steps, plus the one 503; the 400
    assert grew("stepflow_step_attempts_total", runtime="http", outcome="2xx") == 9
    assert grew("stepflow_step_attempts_total", runtime="http", outcome="5xx") == 1
    assert grew("stepflow_step_attempts_total", runtime="http", outcome="4xx") == 1
    assert grew("stepflow_step_retries_total", function="three") == 1
    assert grew("stepflow_step_duration_seconds_count", runtime="http") == 11
    assert grew("stepflow_store_transaction_seconds_count") > 10
    assert value(after, "stepflow_queue_due_jobs") == 0 and value(after, "stepflow_queue_executing_jobs") == 0
    assert ("stepflow_flow_control_waiting_jobs", (("control", "concurrency"),)) in after


async def test_metrics_are_behind_the_signing_key_in_serve(stepflow_factory: ServerFactory) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=[SK], event_keys=["evt-" + "1" * 32]))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 401 and "signing key" in (await resp.json())["error"]["message"]
        async with http.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
    metrics = await scrape(server.url, {"Authorization": f"Bearer {SK}"})
    assert ("stepflow_events_received_total", ()) in metrics


@pytest.mark.runs_once  # a process of its own, on a SQLite file
async def test_metrics_bind_serves_them_on_a_listener_of_its_own(tmp_path: Path) -> None:
    functions = tmp_path / "functions.json"
    functions.write_text(json.dumps({"id": "x", "triggers": [{"event": "m/x"}], "steps": {
        "s": {"runtime": {"type": "http", "url": "http://127.0.0.1:9/never-called"}}}}))
    bind = f"127.0.0.1:{free_port()}"
    server = StepflowProcess(tmp_path, functions, args=["--quiet", "--metrics-bind", bind, "--signing-key", SK])
    await server.start()
    try:
        [event_id] = await _send(server.url, SK)
        metrics = await scrape(f"http://{bind}")  # no key on this listener
        assert value(metrics, "stepflow_events_received_total") == 1, event_id
        async with aiohttp.ClientSession() as http, http.get(f"http://{bind}/v1/runs") as resp:
            assert resp.status == 404  # the metrics listener serves nothing else
    finally:
        await server.stop()


async def _send(url: str, key: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/e/any", json={"name": "m/x", "data": {}},
                                                          headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["ids"])


@pytest.mark.runs_once
@pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")
async def test_a_worker_serves_its_metrics_on_its_metrics_port(tmp_path: Path, step_server: StepServer) -> None:
    functions = tmp_path / "functions.json"
    functions.write_text(json.dumps({"id": "w", "triggers": [{"event": "m/w"}], "steps": {
        "s": {"runtime": {"type": "http", "url": step_server.json("/ok", {})}}}}))
    port = free_port()
    async with serve_and_workers(tmp_path, functions, 0) as cluster:
        cluster.add_worker("--metrics-port", str(port))
        ids = await cluster.send([{"name": "m/w", "data": {}} for _ in range(3)])
        metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for _ in range(200):
            try:
                metrics = await scrape(f"http://127.0.0.1:{port}")
            except aiohttp.ClientError:
                metrics = {}
            if value(metrics, "stepflow_runs_ended_total", function="w", status="Completed") == 3:
                break
            await asyncio.sleep(0.1)
        assert value(metrics, "stepflow_runs_ended_total", function="w", status="Completed") == 3, ids
        assert value(metrics, "stepflow_step_attempts_total", runtime="http", outcome="2xx") == 3
        assert value(metrics, "stepflow_events_received_total") == 0  # the API process received them


async def test_metrics_off_records_nothing(stepflow_factory: ServerFactory, step_server: StepServer) -> None:
    server = await stepflow_factory(config=EngineConfig(backoff_base=0.01, poll_interval=0.2, metrics=False))
    await server.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.json("/ok", {})}}},
                                          id="uncounted", event="m/off"))
    [event_id] = await server.client.send({"name": "m/off", "data": {}})
    [run] = await server.client.get_event_runs(event_id)
    assert (await server.client.wait_for_run(run["run_id"], timeout=20))["status"] == "Completed"
    assert await scrape(server.url) == {}
