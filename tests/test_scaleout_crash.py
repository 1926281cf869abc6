"""Scale-out crash test: one API process and three `stepflow worker` processes share one PostgreSQL; 2,000
runs of a 3-step function whose steps each insert a row into a side table; one worker is killed with
SIGKILL half-way. Afterwards every run is Completed, the store holds each step exactly once, and every
(run, step) side effect happened at least once — more than once only for steps the killed worker was
executing at the moment of the kill (at most its concurrency)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import POSTGRES_URL, free_port

SK = "signkey-test-" + "5f" * 32   # production-strength keys, as `stepflow serve` requires
EK = "evt-" + "a1" * 16

RUNS = 2000
WORKER_CONCURRENCY = 16
HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.runs_once,  # PostgreSQL by construction
              pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")]


async def test_kill_9_of_a_worker_loses_nothing(tmp_path: Path) -> None:
    import asyncpg

    schema = f"crash_{os.getpid()}_{int(time.time())}"
    base_dsn = str(POSTGRES_URL).split("?")[0]
    url = f"{base_dsn}?schema={schema}"
    stepflow_bin = str(Path(sys.executable).with_name("stepflow"))
    subprocess.run([stepflow_bin, "migrate", "--db", url], check=True, capture_output=True)
    admin = await asyncpg.connect(base_dsn, server_settings={"search_path": schema})
    await admin.execute("CREATE TABLE side_effects (run_id TEXT, step_id TEXT, pid INTEGER)")
    workflow = tmp_path / "three.json"
    workflow.write_text(json.dumps({"id": "three-inserts", "triggers": [{"event": "crash/go"}], "steps": {
        name: {"runtime": {"type": "inprocess", "handler": "crash_steps:record"},
               **({"after": [prev]} if prev else {})}
        for name, prev in (("one", None), ("two", "one"), ("three", "two"))}}))
    env = {**os.environ, "PYTHONPATH": str(HERE), "CRASH_TEST_DSN": base_dsn, "CRASH_TEST_SCHEMA": schema,
           "STEPFLOW_LEASE_SECONDS": "3"}
    port = free_port()
    api = subprocess.Popen([stepflow_bin, "serve", "--no-workers", "--db", url, "--port", str(port),
                            "-f", str(workflow), "--signing-key", SK, "--event-key", EK], env=env,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    workers = [subprocess.Popen([stepflow_bin, "worker", "--db", url, "--concurrency", str(WORKER_CONCURRENCY)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SK}"}) as http:
            for _ in range(100):
                try:
                    async with http.get(f"{base}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            for start in range(0, RUNS, 250):
                batch = [{"name": "crash/go", "data": {"n": i}} for i in range(start, start + 250)]
                async with http.post(f"{base}/e/{EK}", json=batch) as resp:
                    assert resp.status == 200, await resp.text()

            async def completed() -> int:
                return int(await admin.fetchval("SELECT COUNT(*) FROM runs WHERE status='COMPLETED'"))

            deadline = time.monotonic() + 120
            while await completed() < RUNS // 2:
                assert time.monotonic() < deadline, "runs are not progressing"
                await asyncio.sleep(0.05)
            victim = workers[0]
            victim.send_signal(signal.SIGKILL)  # mid-flight: it holds leases on up to WORKER_CONCURRENCY steps
            victim.wait()
            killed_at = await completed()
            while await completed() < RUNS:
                assert time.monotonic() < deadline, f"stuck at {await completed()} completed runs"
                await asyncio.sleep(0.1)

        statuses = dict(await admin.fetch("SELECT status, COUNT(*) FROM runs GROUP BY status"))
        assert statuses == {"COMPLETED": RUNS}, statuses
        assert killed_at < RUNS  # the kill did happen mid-way
        # the store holds each step exactly once, completed
        step_rows = await admin.fetch("SELECT status, COUNT(*) FROM steps GROUP BY status")
        assert dict(step_rows) == {"completed": RUNS * 3}
        assert await admin.fetchval("SELECT COUNT(*) FROM jobs") == 0  # nothing left to do, nothing stuck
        # every side effect at least once; duplicates only for steps the killed worker had in flight
        effects = await admin.fetch("SELECT run_id, step_id, COUNT(*) AS n, array_agg(pid) AS pids "
                                    "FROM side_effects GROUP BY run_id, step_id")
        assert len(effects) == RUNS * 3
        duplicated = [e for e in effects if e["n"] > 1]
        assert all(victim.pid in e["pids"] and e["n"] == 2 for e in duplicated), duplicated[:5]
        assert len(duplicated) <= WORKER_CONCURRENCY
        print(f"\n{RUNS} runs; worker {victim.pid} killed at {killed_at} completed; "
              f"{len(duplicated)} step(s) executed twice (they were in flight on it)")
    finally:
        for proc in [api, *workers]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [api, *workers]:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
