"""Flow control across real processes sharing a PostgreSQL database: an API process (`stepflow serve
--no-workers`) and two `stepflow worker` processes. The step server, in this test, records how many calls of each
key run at once: a concurrency limit holds between the two workers, and a throttle spaces run starts across
them."""

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
from conftest import POSTGRES_URL, StepServer, free_port
from flow_support import Recorder

SK = "signkey-test-" + "3d" * 32   # production-strength keys, as `stepflow serve` requires
EK = "evt-" + "c4" * 16
STEPFLOW = str(Path(sys.executable).with_name("stepflow"))

pytestmark = [pytest.mark.runs_once,  # PostgreSQL by construction
              pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")]


async def test_limits_hold_between_two_worker_processes(tmp_path: Path, step_server: StepServer) -> None:
    import asyncpg

    limited, paced = Recorder(hold=0.2), Recorder(hold=0.0)
    schema = f"flowproc_{os.getpid()}_{int(time.time())}"
    base_dsn = str(POSTGRES_URL).split("?")[0]
    url = f"{base_dsn}?schema={schema}"
    subprocess.run([STEPFLOW, "migrate", "--db", url], check=True, capture_output=True)
    functions = tmp_path / "functions.json"
    functions.write_text(json.dumps({"functions": [
        {"id": "limited", "triggers": [{"event": "f/limited"}], "concurrency": [{"limit": 2, "key": "event.data.key"}],
         "steps": {"s": {"runtime": {"type": "http", "url": step_server.route("/limited", limited)}}}},
        {"id": "paced", "triggers": [{"event": "f/paced"}], "throttle": {"limit": 2, "period": "2s"},
         "steps": {"s": {"runtime": {"type": "http", "url": step_server.route("/paced", paced)}}}},
    ]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}
    port = free_port()
    log = (tmp_path / "processes.log").open("wb")
    processes = [subprocess.Popen([STEPFLOW, "serve", "--no-workers", "--db", url, "--port", str(port), "-f",
                                   str(functions), "--signing-key", SK, "--event-key", EK], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)]
    processes += [subprocess.Popen([STEPFLOW, "worker", "--db", url, "--concurrency", "16"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT) for _ in range(2)]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SK}"}) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(f"{base}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "processes.log").read_text()
                await asyncio.sleep(0.1)

            async def send(events: list[dict[str, Any]]) -> list[str]:
                async with http.post(f"{base}/e/{EK}", json=events) as resp:
                    assert resp.status == 200, await resp.text()
                    return list((await resp.json())["ids"])

            sent_at = time.monotonic()
            ids = await send([{"name": "f/limited", "data": {"key": key, "n": n}} for key in ("a", "b")
                              for n in range(10)])
            ids += await send([{"name": "f/paced", "data": {"n": n}} for n in range(5)])

            async def ended() -> int:
                count = 0
                for event_id in ids:
                    async with http.get(f"{base}/v1/events/{event_id}/runs") as resp:
                        runs = (await resp.json())["data"]
                    count += sum(1 for r in runs if r["status"] == "Completed")
                return count

            deadline = time.monotonic() + 60
            while await ended() < len(ids):
                assert time.monotonic() < deadline, (tmp_path / "processes.log").read_text()
                await asyncio.sleep(0.2)
        assert all(p.poll() is None for p in processes), (tmp_path / "processes.log").read_text()
        # concurrency: two of each key at once between the two workers, never more (each had 16 free slots); each
        # step executed once (a wake racing a claim once undid the claim's lease, and the step ran twice)
        assert sorted(run for _, _, _, run, _ in limited.spans) == sorted({run for _, _, _, run, _ in limited.spans})
        assert dict(limited.most) == {"a": 2, "b": 2} and len(limited.started) == 20, sorted(limited.spans)
        # throttle: 2 per 2 s — two at once, then one a second, across both workers
        starts = sorted(at - sent_at for at, _, _ in paced.started)
        assert len(starts) == 5 and starts[2] >= 0.9 and starts[4] >= 2.9, starts
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        admin = await asyncpg.connect(base_dsn)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()
