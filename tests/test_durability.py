"""Durability (issue item 6), with a real process kill: `stepflow dev` runs as a subprocess on a SQLite file,
is killed with SIGKILL in the middle of a run, and is started again on the same file. The run completes, and
no step that had completed before the kill is executed again."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import StepServer
from process_support import StepflowProcess

from stepflow import Client

pytestmark = pytest.mark.runs_once  # crash tests of the embedded SQLite engine

class CountingSteps:
    """Step handlers on the test's step server that count calls per (run, step); `gate` steps block until
    released, so the server can be killed while they execute."""

    def __init__(self, step_server: StepServer) -> None:
        self.step_server = step_server
        self.calls: Counter[tuple[str, str]] = Counter()
        self.called_at: dict[tuple[str, str], list[float]] = {}
        self.arrived = asyncio.Condition()
        self.release = asyncio.Event()

    def route(self, step_id: str, *, gate: bool = False) -> str:
        async def handler(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
            key = (payload["ctx"]["run_id"], payload["ctx"]["step_id"])
            self.called_at.setdefault(key, []).append(time.time())
            async with self.arrived:
                self.calls[key] += 1
                self.arrived.notify_all()
            if gate:
                await self.release.wait()
            return web.json_response({"status": 200, "body": {"step": step_id,
                                                              "saw": sorted(payload["steps"])}})
        return self.step_server.route(f"/{step_id}", handler)

    async def wait_for_calls(self, run_id: str, step_id: str, count: int, timeout: float = 20) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: self.calls[(run_id, step_id)] >= count), timeout)


@pytest.fixture
async def counting(step_server: StepServer) -> AsyncIterator[CountingSteps]:
    steps = CountingSteps(step_server)
    yield steps
    steps.release.set()  # never leave a gated handler waiting (the step server's shutdown would wait for it)


@pytest.fixture
async def processes() -> AsyncIterator[list[StepflowProcess]]:
    started: list[StepflowProcess] = []
    yield started
    for proc in started:
        await proc.stop()


def write_workflow(tmp_path: Path, steps: dict[str, Any]) -> Path:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps({"id": "durable", "triggers": [{"event": "test/durable"}], "steps": steps}))
    return path


async def send_one(url: str) -> str:
    async with Client(url) as client:
        (event_id,) = await client.send({"name": "test/durable", "data": {"n": 1}})
        (run,) = await client.get_event_runs(event_id)
        return str(run["run_id"])


async def steps_of(url: str, run_id: str) -> dict[str, dict[str, Any]]:
    async with Client(url) as client:
        return {s["step_id"]: s for s in await client.get_run_steps(run_id)}


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def test_kill_9_during_a_step_then_restart_completes_without_rerunning_completed_steps(
        tmp_path: Path, counting: CountingSteps, processes: list[StepflowProcess]) -> None:
    workflow = write_workflow(tmp_path, {
        "one": {"runtime": {"type": "http", "url": counting.route("one")}},
        "two": {"runtime": {"type": "http", "url": counting.route("two", gate=True)}, "after": ["one"]},
        "three": {"runtime": {"type": "http", "url": counting.route("three")}, "after": ["two"]},
    })
    server = StepflowProcess(tmp_path, workflow)
    processes.append(server)
    await server.start()

    run_id = await send_one(server.url)
    await counting.wait_for_calls(run_id, "two", 1)  # step two is executing, step one is done
    before = await steps_of(server.url, run_id)
    assert before["one"]["status"] == "completed" and before["two"]["status"] == "running"

    await server.kill9()
    assert counting.calls[(run_id, "one")] == 1

    await server.start()
    # the restarted engine takes over the dead process's step at once (no lease expiry to wait for)
    await counting.wait_for_calls(run_id, "two", 2, timeout=10)
    counting.release.set()

    async with Client(server.url) as client:
        run = await client.wait_for_run(run_id, timeout=20)
        steps = {s["step_id"]: s for s in await client.get_run_steps(run_id)}
    assert run["status"] == "Completed", (run, server.log)
    assert run["output"] == {"step": "three", "saw": ["one", "two"]}

    assert counting.calls[(run_id, "one")] == 1     # completed before the kill: zero more executions
    assert counting.calls[(run_id, "two")] == 2     # in flight at the kill: executed again, once
    assert counting.calls[(run_id, "three")] == 1
    assert [steps[s]["status"] for s in ("one", "two", "three")] == ["completed"] * 3
    assert steps["one"]["attempts"] == 1 and steps["three"]["attempts"] == 1
    assert steps["one"]["output"] == before["one"]["output"]  # the stored result survived the kill


async def test_kill_9_during_a_wait_then_restart_runs_the_child_on_time(
        tmp_path: Path, counting: CountingSteps, processes: list[StepflowProcess]) -> None:
    wait = 3.0
    workflow = write_workflow(tmp_path, {
        "one": {"runtime": {"type": "http", "url": counting.route("one")}},
        # a number of seconds (not "3s"): the restarted engine re-reads the stored definition, which must parse
        "two": {"runtime": {"type": "http", "url": counting.route("two")}, "after": [{"step": "one", "wait": wait}]},
        "three": {"runtime": {"type": "http", "url": counting.route("three")}, "after": ["two"]},
    })
    server = StepflowProcess(tmp_path, workflow)
    processes.append(server)
    await server.start()

    run_id = await send_one(server.url)
    await counting.wait_for_calls(run_id, "one", 1)
    deadline = time.monotonic() + 10
    while True:  # step one's result is stored and step two is waiting
        steps = await steps_of(server.url, run_id)
        if steps.get("one", {}).get("status") == "completed" and steps.get("two", {}).get("status") == "scheduled":
            break
        assert time.monotonic() < deadline, steps
        await asyncio.sleep(0.02)
    one_ended = ts(steps["one"]["ended_at"])
    assert ts(steps["two"]["scheduled_at"]) >= one_ended + wait - 0.01

    await server.kill9()
    assert time.time() < one_ended + wait, "killed too late to test the wait"
    assert counting.calls[(run_id, "two")] == 0

    await server.start()
    async with Client(server.url) as client:
        run = await client.wait_for_run(run_id, timeout=20)
    assert run["status"] == "Completed", (run, server.log)
    assert run["output"] == {"step": "three", "saw": ["one", "two"]}
    assert counting.calls[(run_id, "one")] == 1
    assert counting.calls[(run_id, "two")] == 1
    assert counting.calls[(run_id, "three")] == 1
    # the restart neither lost the wait nor shortened it
    assert counting.called_at[(run_id, "two")][0] >= one_ended + wait - 0.05
