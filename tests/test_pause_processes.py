"""A pause holds across every process sharing a PostgreSQL database: an API process (`stepflow serve
--no-workers`) pauses a function, and two `stepflow worker` processes — one started before the pause, one after —
execute nothing of it; runs show PAUSED everywhere; after `resume` the workers complete every run."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL
from process_support import Cluster, serve_and_workers

HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.runs_once,  # PostgreSQL by construction
              pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")]


async def _call(cluster: Cluster, method: str, path: str, body: Any = None) -> Any:
    async with cluster.http.request(method, cluster.url + path, json=body) as resp:
        assert resp.status < 300, await resp.text()
        return (await resp.json())["data"]


async def test_a_pause_holds_for_every_worker_process_until_resumed(tmp_path: Path) -> None:
    workflow = tmp_path / "flow.json"
    workflow.write_text(json.dumps({"id": "flow", "triggers": [{"event": "p/go"}], "steps": {
        "one": {"runtime": {"type": "inprocess", "handler": "restart_steps:echo"}},
        "two": {"runtime": {"type": "inprocess", "handler": "restart_steps:echo"}, "after": ["one"]}}}))
    async with serve_and_workers(tmp_path, workflow, 1, env={"PYTHONPATH": str(HERE)}) as cluster:
        async def status_of(event_id: str) -> str:
            runs = await _call(cluster, "GET", f"/v1/events/{event_id}/runs")
            return str(runs[0]["status"]) if runs else "none"

        async def until(what: str, done: Any, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not await done():
                assert time.monotonic() < deadline, f"{what}\n{cluster.log.read_text()}"
                await asyncio.sleep(0.05)

        # before the pause, the worker executes runs
        [warmup] = await cluster.send([{"name": "p/go", "data": {"n": -1}}])
        await until("the warm-up run", lambda: _is(status_of(warmup), "Completed"))
        paused = await _call(cluster, "POST", "/v2/functions/flow/pause", {})
        assert paused["paused"] is True
        cluster.add_worker()   # a worker started after the pause honours it too
        sent = await cluster.send([{"name": "p/go", "data": {"n": n}} for n in range(20)])
        await asyncio.sleep(2.0)   # ample for two idle workers to execute 20 runs, were they not paused
        assert {await status_of(e) for e in sent} == {"Paused"}
        for event_id in sent:
            [run] = await _call(cluster, "GET", f"/v1/events/{event_id}/runs")
            steps = await _call(cluster, "GET", f"/v1/runs/{run['run_id']}/steps")
            assert {s["status"] for s in steps} <= {"scheduled"}, steps  # nothing executed
        [listed] = await _call(cluster, "GET", "/v1/functions")
        assert listed["paused"] is True

        resumed = await _call(cluster, "POST", "/v2/functions/flow/resume", {})
        assert resumed["runs_resumed"] == 20

        async def all_completed() -> bool:
            return {await status_of(e) for e in sent} == {"Completed"}

        await until("the resumed runs", all_completed)
        outputs = sorted([(await _call(cluster, "GET", f"/v1/events/{e}/runs"))[0]["output"]["n"] for e in sent])
        assert outputs == list(range(20))
        assert cluster.alive(), cluster.log.read_text()


async def _is(status: Any, expected: str) -> bool:
    return bool(await status == expected)
