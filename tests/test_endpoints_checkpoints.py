"""Durable endpoints: checkpointing is off the request path, retried through outages, and never lost
(issue 7, item 4)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import free_port
from endpoints_support import (  # noqa: F401 - fixtures are found by name
    ApiFactory,
    CheckpointProxy,
    api_factory,
    http,
    server,
    start_stepflow_on,
    three_step_handler,
)

from stepflow import endpoints
from stepflow.endpoints.checkpointer import Checkpointer
from stepflow.server import ServerSettings


async def test_checkpoints_wait_out_a_server_outage(
        tmp_path: Path, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    port = free_port()  # nothing listens here yet: the stepflow server is "down"
    base_url = f"http://127.0.0.1:{port}"
    calls: Counter[str] = Counter()
    api = await api_factory(base_url, lambda app: app.router.add_post("/three", three_step_handler(calls)))

    run_ids = []
    for n in range(3):
        started = time.perf_counter()
        async with http.post(f"{api.url}/three", json={"n": n}) as resp:
            assert resp.status == 200 and await resp.json() == {"n": n, "result": (n + 1) * 2}
            run_ids.append(resp.headers["X-Run-ID"])
        assert time.perf_counter() - started < 0.5  # the response does not wait for the server
    await asyncio.sleep(0.3)
    assert api.provider.checkpointer.failures >= 2  # being retried
    assert api.provider.checkpointer.pending() > 0
    assert await api.provider.wait(0.1) is False  # not drained while the server is down

    runner, engine = await start_stepflow_on(port, tmp_path / "late.db")  # the server comes back, same port
    try:
        assert await api.provider.wait(15) is True
        assert api.provider.checkpointer.pending() == 0
        async with aiohttp.ClientSession() as client:
            for n, run_id in enumerate(run_ids):
                async with client.get(f"{base_url}/v1/runs/{run_id}") as resp:
                    run = (await resp.json())["data"]
                assert run["status"] == "Completed"
                assert json.loads(run["output"]["body"]) == {"n": n, "result": (n + 1) * 2}
                async with client.get(f"{base_url}/v1/runs/{run_id}/steps") as resp:
                    steps = (await resp.json())["data"]
                assert [s["step_id"] for s in steps] == ["payload", "one", "two"]
        assert calls["one"] == 3
    finally:
        await api.provider.close()
        await runner.cleanup()
        await engine.stop(grace=1.0)


async def test_a_full_buffer_warns_and_loses_nothing(
        tmp_path: Path, api_factory: ApiFactory, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    proxy = await CheckpointProxy(base_url).start()  # records the order in which checkpoints arrive
    calls: Counter[str] = Counter()
    api = await api_factory(proxy.url, lambda app: app.router.add_post("/three", three_step_handler(calls)))
    # a tiny buffer: 4 requests x (run + 3 steps + response) checkpoints do not fit
    api.provider.checkpointer = Checkpointer(proxy.url, None, max_buffer=2, retry_max=0.2)

    async def request(n: int) -> str:
        async with http.post(f"{api.url}/three", json={"n": n}) as resp:
            assert resp.status == 200 and await resp.json() == {"n": n, "result": (n + 1) * 2}
            return resp.headers["X-Run-ID"]

    with caplog.at_level(logging.WARNING, logger="stepflow.endpoints"):
        requests = [asyncio.create_task(request(n)) for n in range(4)]
        await asyncio.sleep(0.5)
        assert "checkpoint buffer full" in caplog.text
        # bounded: requests wait for room (backpressure) rather than buffer without limit or drop anything
        assert not all(task.done() for task in requests)
        assert api.provider.checkpointer.pending() > 0
        runner, engine = await start_stepflow_on(port, tmp_path / "late.db")
    try:
        run_ids = await asyncio.wait_for(asyncio.gather(*requests), 15)
        assert await api.provider.wait(15) is True
        async with aiohttp.ClientSession() as client:
            for n, run_id in enumerate(run_ids):
                async with client.get(f"{base_url}/v1/runs/{run_id}") as resp:
                    run = (await resp.json())["data"]
                assert run["status"] == "Completed", run
                assert json.loads(run["output"]["body"]) == {"n": n, "result": (n + 1) * 2}
                async with client.get(f"{base_url}/v1/runs/{run_id}/steps") as resp:
                    steps = (await resp.json())["data"]
                assert [(s["step_id"], s["status"]) for s in steps] == [
                    ("payload", "completed"), ("one", "completed"), ("two", "completed")]
        assert calls["one"] == 4
        assert api.provider.checkpointer.sent == 4 * 5
        # in order for each run: a step never arrives before its run, nor the response before a step
        for run_id in run_ids:
            assert [op for op, rid in proxy.delivered if rid == run_id] == ["run", "steps", "steps", "steps",
                                                                           "response"]
    finally:
        await api.provider.close()
        await proxy.stop()
        await runner.cleanup()
        await engine.stop(grace=1.0)


async def test_a_batch_too_large_for_the_server_is_not_lost(
        tmp_path: Path, api_factory: ApiFactory, http: aiohttp.ClientSession) -> None:
    """Checkpoints pile up while the server is down; the batch sent when it is back is larger than the
    server accepts in one request (413): it must be split, not dropped."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    calls: Counter[str] = Counter()
    @endpoints.durable(id="upload")
    async def upload(request: web.Request, step: Any) -> web.Response:
        size = await step.run("size", lambda: len(request.query.get("name", "")))
        data = await request.read()
        stored = await step.run("store", lambda: len(data))
        return web.json_response({"stored": stored, "name": size})

    def routes(app: web.Application) -> None:
        app.router.add_post("/three", three_step_handler(calls))
        app.router.add_post("/upload", upload)

    api = await api_factory(base_url, routes)
    filler = "x" * 30_000
    run_ids = []
    for n in range(6):
        async with http.post(f"{api.url}/three", json={"n": n, "filler": filler}) as resp:
            assert resp.status == 200
            run_ids.append(resp.headers["X-Run-ID"])
    runner, engine = await start_stepflow_on(port, tmp_path / "late.db",
                                             ServerSettings(dev=True, max_request_bytes=100_000))
    try:
        assert await api.provider.wait(15) is True
        for run_id in run_ids:
            run = await engine.store.get_run(run_id)
            assert run is not None and run.status.v1_name == "Completed"
            steps = await engine.store.get_run_steps(run_id)
            assert sorted(s.display_name for s in steps) == ["one", "payload", "two"]
        assert api.provider.checkpointer.refused == 0

        # a request body alone larger than the server accepts: the run is kept, without that body
        async with http.post(f"{api.url}/upload?name=abc", data=b"y" * 150_000) as resp:
            assert resp.status == 200 and await resp.json() == {"stored": 150_000, "name": 3}
            big_run = resp.headers["X-Run-ID"]
        assert await api.provider.wait(15) is True
        run = await engine.store.get_run(big_run)
        assert run is not None and run.status.v1_name == "Completed"
        event = await engine.store.get_event(big_run)
        assert event is not None and "body" not in event.data
        assert event.data["body_omitted"] and event.data["method"] == "POST"
        assert len(await engine.store.get_run_steps(big_run)) == 2
    finally:
        await api.provider.close()
        await runner.cleanup()
        await engine.stop(grace=1.0)
