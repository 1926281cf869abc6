"""A pause holds across every process sharing a PostgreSQL database: an API process (`stepflow serve
--no-workers`) pauses a function, and two `stepflow worker` processes — one started before the pause, one after —
execute nothing of it; runs show PAUSED everywhere; after `resume` the workers complete every run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import POSTGRES_URL, free_port

SK = "signkey-test-" + "7c" * 32   # production-strength keys, as `stepflow serve` requires
EK = "evt-" + "b2" * 16
STEPFLOW = str(Path(sys.executable).with_name("stepflow"))
HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.runs_once,  # PostgreSQL by construction
              pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")]


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["data"]


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with http.post(url, json=body) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def test_a_pause_holds_for_every_worker_process_until_resumed(tmp_path: Path) -> None:
    import asyncpg

    schema = f"paused_{os.getpid()}_{int(time.time())}"
    base_dsn = str(POSTGRES_URL).split("?")[0]
    url = f"{base_dsn}?schema={schema}"
    subprocess.run([STEPFLOW, "migrate", "--db", url], check=True, capture_output=True)
    workflow = tmp_path / "flow.json"
    workflow.write_text(json.dumps({"id": "flow", "triggers": [{"event": "p/go"}], "steps": {
        "one": {"runtime": {"type": "inprocess", "handler": "restart_steps:echo"}},
        "two": {"runtime": {"type": "inprocess", "handler": "restart_steps:echo"}, "after": ["one"]}}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}, "PYTHONPATH": str(HERE)}
    port = free_port()
    logs = tmp_path / "processes.log"
    out = logs.open("wb")
    api = subprocess.Popen([STEPFLOW, "serve", "--no-workers", "--db", url, "--port", str(port), "-f", str(workflow),
                            "--signing-key", SK, "--event-key", EK], env=env, stdout=out, stderr=subprocess.STDOUT)
    processes = [api]

    def worker() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([STEPFLOW, "worker", "--db", url], env=env, stdout=out, stderr=subprocess.STDOUT)
        processes.append(proc)
        return proc

    base = f"http://127.0.0.1:{port}"
    admin = await asyncpg.connect(base_dsn, server_settings={"search_path": schema})
    try:
        worker()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SK}"}) as http:
            deadline = time.monotonic() + 30
            while True:
                assert api.poll() is None, logs.read_text()
                try:
                    async with http.get(f"{base}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, logs.read_text()
                await asyncio.sleep(0.1)

            # before the pause, the worker executes runs
            [warmup] = (await _post(http, f"{base}/e/{EK}", {"name": "p/go", "data": {"n": -1}}))["ids"]

            async def status_of(event_id: str) -> str:
                runs = await _get(http, f"{base}/v1/events/{event_id}/runs")
                return str(runs[0]["status"]) if runs else "none"

            while await status_of(warmup) != "Completed":
                assert time.monotonic() < deadline + 30, logs.read_text()
                await asyncio.sleep(0.05)

            paused = (await _post(http, f"{base}/v2/functions/flow/pause", {}))["data"]
            assert paused["paused"] is True
            worker()   # a worker started after the pause honours it too
            sent = (await _post(http, f"{base}/e/{EK}", [{"name": "p/go", "data": {"n": n}} for n in range(20)]))[
                "ids"]
            await asyncio.sleep(2.0)   # ample for two idle workers to execute 20 runs, were they not paused
            assert {await status_of(e) for e in sent} == {"Paused"}
            assert await admin.fetchval("SELECT COUNT(*) FROM steps WHERE status='completed' AND run_id IN "
                                        "(SELECT id FROM runs WHERE status='PAUSED')") == 0
            [listed] = await _get(http, f"{base}/v1/functions")
            assert listed["paused"] is True

            resumed = (await _post(http, f"{base}/v2/functions/flow/resume", {}))["data"]
            assert resumed["runs_resumed"] == 20
            deadline = time.monotonic() + 60
            while {await status_of(e) for e in sent} != {"Completed"}:
                assert time.monotonic() < deadline, logs.read_text()
                await asyncio.sleep(0.1)
            outputs = sorted([(await _get(http, f"{base}/v1/events/{e}/runs"))[0]["output"]["n"] for e in sent])
            assert outputs == list(range(20))
            assert all(p.poll() is None for p in processes), logs.read_text()
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        out.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
