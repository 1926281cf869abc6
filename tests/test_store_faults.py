"""Faults of the database, survived (issue 11). Real processes, real faults:

- one engine per SQLite file, whatever path reaches it: a second `stepflow dev` through a symlink or a hard
  link exits with the clear message, and the first one's in-flight steps are unharmed;
- PostgreSQL restarted (`pg_ctl restart -m fast`) and stopped for a while under 500 in-flight runs (a private
  cluster on its own port): the API answers 503 with a message while it is down, API and workers reconnect by
  themselves, no acknowledged event or run is lost, no step executes twice, every run completes;
- SQLite on a full disk (a small tmpfs): writes fail with a clear 503, the server stays up and keeps serving
  reads, nothing committed is lost (`PRAGMA integrity_check`), and it recovers once space is freed;
- a worker frozen past its lease (SIGSTOP, SIGCONT after another worker took its step over): its late result
  never reaches the step the run used.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import POSTGRES_URL, StepServer, free_port
from faults_support import STEPFLOW, PrivatePostgres, Proc, SmallDisk, wait_http, wait_until

pytestmark = pytest.mark.runs_once  # each fault test picks its own database


EVENT_KEY = "eventkey-3c9a1f7e5b2d4086"
SIGNING_KEY = "5f0c1e7a9b3d4c2e8f6a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e"


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def write_workflow(path: Path, fn_id: str, event: str, steps: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"id": fn_id, "triggers": [{"event": event}], "steps": steps}))
    return path


def calls_per_step(step_server: StepServer, *paths: str) -> Counter[tuple[str, str]]:
    """How many times each (run, step) was executed, as the step server saw it."""
    return Counter((p["ctx"]["run_id"], p["ctx"]["step_id"]) for path in paths
                   for p in step_server.calls.get(path, []))


# --- one engine per SQLite database, whatever the path ----------------------------------------------------


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
async def test_a_second_engine_through_a_link_is_refused_and_the_first_is_unharmed(
        tmp_path: Path, step_server: StepServer, procs: list[Proc], link: str) -> None:
    gate = asyncio.Event()

    async def held(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"status": 200, "body": {"run": payload["ctx"]["run_id"]}})

    workflow = write_workflow(tmp_path / "wf.json", "held", "test/held",
                              {"one": {"runtime": {"type": "http", "url": step_server.route("/one", held)}}})
    data = tmp_path / "data"
    data.mkdir()
    db = data / "s.db"
    first_port = free_port()
    first = Proc("first", ["dev", "--port", str(first_port), "--db", str(db), "-f", str(workflow)], tmp_path)
    procs.append(first)
    base = f"http://127.0.0.1:{first_port}"
    try:
        await wait_http(f"{base}/health", first)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/e/x", json=[{"name": "test/held", "data": {"n": i}}
                                                       for i in range(20)]) as resp:
                assert resp.status == 200, await resp.text()
        await wait_until(lambda: len(step_server.calls.get("/one", [])) == 20, 20, "20 steps in flight")

        other = tmp_path / "elsewhere"
        other.mkdir()
        alias = other / "alias.db"
        if link == "symlink":
            alias.symlink_to(db)
        else:
            os.link(db, alias)
        second = Proc("second", ["dev", "--port", str(free_port()), "--db", str(alias), "-f", str(workflow)],
                      tmp_path)
        procs.append(second)
        try:
            assert second.wait_exit(15) != 0, second.log
        except subprocess.TimeoutExpired:
            pytest.fail(f"a second engine started on the same database through a {link}:\n{second.log}")
        assert f"another stepflow engine (pid {first.pid}) is already running on {alias}" in second.log, second.log
        # refused before it opened the database: no WAL of its own beside the alias
        assert not (other / "alias.db-wal").exists() and not (other / "alias.db-shm").exists()

        # the first engine is unharmed: its 20 steps are still in flight, none was started again
        await asyncio.sleep(0.5)
        assert first.alive()
        assert len(step_server.calls["/one"]) == 20
        gate.set()
        async with aiohttp.ClientSession() as http:
            async def completed() -> int:
                async with http.get(f"{base}/v1/runs?status=Completed&limit=100") as resp:
                    assert resp.status == 200, await resp.text()
                    return len((await resp.json())["data"])

            await wait_until(lambda: completed(), 20, "the 20 runs to complete")
        assert calls_per_step(step_server, "/one") == Counter(
            {(p["ctx"]["run_id"], "one"): 1 for p in step_server.calls["/one"]})
        assert len(calls_per_step(step_server, "/one")) == 20
    finally:
        gate.set()
        for proc in procs:
            proc.stop()
    assert first.popen.returncode == 0, first.log
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert check.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall() == [("COMPLETED", 20)]


# --- PostgreSQL restarted and stopped under 500 in-flight runs ---------------------------------------------

RUNS = 500


class Prober:
    """Sends one new event every 0.1 s to the event API and, like a real client, sends it again (same id)
    until it is acknowledged. Records every answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.acknowledged: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.refusals: list[tuple[float, int, str]] = []   # (time, status, body) of every non-200 answer
        self._stop = asyncio.Event()

    async def run(self, http: aiohttp.ClientSession) -> None:
        n = 0
        while not self._stop.is_set():
            event = {"id": f"probe-{n}", "name": "test/pg", "data": {"probe": n}}
            for _ in range(600):  # bounded: 60 s of retries at most
                async with http.post(f"{self.base}/e/{EVENT_KEY}", json=event) as resp:
                    self.statuses[resp.status] += 1
                    if resp.status == 200:
                        self.acknowledged.append(str(event["id"]))
                        break
                    self.refusals.append((time.monotonic(), resp.status, await resp.text()))
                await asyncio.sleep(0.1)
            n += 1
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()


async def pg_value(url: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_postgres_restart_and_outage_under_500_in_flight_runs(
        tmp_path: Path, step_server: StepServer, procs: list[Proc]) -> None:
    pytest.importorskip("asyncpg")

    async def slow(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.json_response({"status": 200, "body": {"step": payload["ctx"]["step_id"]}})

    workflow = write_workflow(tmp_path / "wf.json", "pg-two-steps", "test/pg", {
        "one": {"runtime": {"type": "http", "url": step_server.route("/one", slow)}},
        "two": {"runtime": {"type": "http", "url": step_server.route("/two", slow)}, "after": ["one"]}})
    pg = PrivatePostgres(free_port())
    try:
        url = pg.url
        subprocess.run([STEPFLOW, "migrate", "--db", url], check=True, capture_output=True, timeout=60)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {"STEPFLOW_LEASE_SECONDS": "10"}
        api = Proc("api", ["serve", "--no-workers", "--port", str(port), "--db", url, "-f", str(workflow),
                           "--signing-key", SIGNING_KEY, "--event-key", EVENT_KEY], tmp_path, env)
        procs.append(api)
        workers = [Proc(f"worker-{i}", ["worker", "--db", url, "--concurrency", "30"], tmp_path, env)
                   for i in range(2)]
        procs.extend(workers)
        await wait_http(f"{base}/health", api)
        for worker in workers:
            await wait_until(lambda w=worker: "stepflow worker" in w.log or not w.alive(), 30, f"{worker.name}")
            assert worker.alive(), worker.log

        def finished_runs() -> int:  # runs whose last step was executed (as the step server saw it)
            return len(step_server.calls.get("/two", []))

        async with aiohttp.ClientSession() as http:
            for start in range(0, RUNS, 100):
                batch = [{"id": f"ev-{i}", "name": "test/pg", "data": {"n": i}} for i in range(start, start + 100)]
                async with http.post(f"{base}/e/{EVENT_KEY}", json=batch) as resp:
                    assert resp.status == 200, await resp.text()
            prober = Prober(base)
            probing = asyncio.create_task(prober.run(http))
            try:
                # 1. pg_ctl restart -m fast while the runs execute
                await wait_until(lambda: finished_runs() >= 50, 30, "50 runs to finish")
                await asyncio.to_thread(pg.restart, "fast")
                restarted_at = finished_runs()
                assert restarted_at < RUNS - 100, "the restart came too late to test anything"
                # 2. they reconnect by themselves: runs go on finishing
                await wait_until(lambda: finished_runs() >= restarted_at + 100, 30, "progress after the restart")
                # 3. an outage long enough to look at: POST /e/ answers 503 with a message, nobody spins
                await asyncio.to_thread(pg.stop, "fast")
                stopped_at = time.monotonic()
                down_at = finished_runs()
                assert down_at < RUNS, "the outage came too late to test anything"
                cpu_before = {p.name: p.cpu_seconds() for p in (api, *workers)}
                await asyncio.sleep(2.0)
                cpu_used = {p.name: p.cpu_seconds() - cpu_before[p.name] for p in (api, *workers)}
                async with http.post(f"{base}/e/{EVENT_KEY}", json={"name": "test/pg", "data": {"while": "down"},
                                                           "id": "while-down"}) as resp:
                    down_status, down_body = resp.status, await resp.json()
                await asyncio.to_thread(pg.start)
                assert finished_runs() - down_at <= 60, "steps kept finishing while the database was down?"
            finally:
                prober.stop()
                await asyncio.wait_for(probing, 60)

            # every acknowledged event's run completes; the one refused while down was never stored
            expected = RUNS + len(prober.acknowledged)

            async def completed() -> bool:
                return int(await pg_value(url, "SELECT COUNT(*) FROM runs WHERE status='COMPLETED'")) >= expected

            await wait_until(completed, 45, f"{expected} runs to complete", interval=0.25)

        assert down_status == 503, down_body
        assert down_body["code"] == "store_unavailable", down_body
        assert "PostgreSQL" in down_body["error"] and "unavailable" in down_body["error"], down_body
        assert "Traceback" not in json.dumps(down_body)
        assert set(prober.statuses) <= {200, 503}, prober.statuses   # never a 500
        assert any(at >= stopped_at for at, _, _ in prober.refusals), prober.refusals
        for _, _status, body in prober.refusals:
            assert json.loads(body)["code"] == "store_unavailable", body
        for name, used in cpu_used.items():  # waiting for the database, not spinning on it
            assert used < 0.6, f"{name} used {used:.2f}s of CPU in 2s while the database was down"

        assert await pg_value(url, "SELECT COUNT(*) FROM runs") == expected
        assert await pg_value(url, "SELECT COUNT(*) FROM runs WHERE status='COMPLETED'") == expected
        assert await pg_value(url, "SELECT COUNT(*) FROM events WHERE id='while-down'") == 0
        acked = [f"ev-{i}" for i in range(RUNS)] + prober.acknowledged
        stored = await pg_value(url, "SELECT COUNT(*) FROM events WHERE id = ANY(ARRAY['"
                                + "','".join(acked) + "'])")
        assert stored == len(acked)
        assert await pg_value(url, "SELECT COUNT(*) FROM steps WHERE status='completed'") == 2 * expected
        assert await pg_value(url, "SELECT COUNT(*) FROM jobs") == 0
        # no step executed twice: not those stored before the restart, not those in flight across it
        executions = calls_per_step(step_server, "/one", "/two")
        assert len(executions) == 2 * expected
        assert max(executions.values()) == 1, [k for k, v in executions.items() if v > 1][:5]
        for proc in (api, *workers):
            assert proc.alive(), proc.log
            assert "Traceback" not in proc.log, proc.log
        for worker in workers:
            assert "the database is unavailable" in worker.log, worker.log
        print(f"\n{expected} runs; restart at {restarted_at} finished runs, outage at {down_at}; "
              f"answers {dict(prober.statuses)}; CPU while down {cpu_used}")
    finally:
        for proc in procs:
            proc.stop()
        pg.destroy()


# --- a worker frozen past its lease ------------------------------------------------------------------------


@pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")
@pytest.mark.parametrize("late_status", [200, 500])
async def test_a_worker_frozen_past_its_lease_never_overwrites_the_step(
        tmp_path: Path, step_server: StepServer, procs: list[Proc], late_status: int) -> None:
    """Worker A executes step `one` and is frozen (SIGSTOP) while the step server answers it; its lease
    expires, worker B takes the step over. A is thawed (SIGCONT) while B's attempt is still executing, so A's
    late answer — a success, or a 5xx asking for a retry — meets the step in B's hands. It must change
    nothing: the step shows B's attempt only, the run continues with B's result."""
    import asyncpg

    first_arrived, answer_first = asyncio.Event(), asyncio.Event()
    second_arrived, answer_second = asyncio.Event(), asyncio.Event()

    async def one(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        if len(step_server.calls["/one"]) == 1:  # worker A's attempt
            first_arrived.set()
            await answer_first.wait()
            return web.json_response({"status": late_status, "body": {"who": "frozen"}}, status=late_status)
        second_arrived.set()  # worker B's attempt
        await answer_second.wait()
        return web.json_response({"status": 200, "body": {"who": "takeover"}})

    async def two(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        return web.json_response({"status": 200, "body": {"saw": payload["steps"]["one"]}})

    workflow = write_workflow(tmp_path / "wf.json", "frozen", "test/frozen", {
        "one": {"runtime": {"type": "http", "url": step_server.route("/one", one)}},
        "two": {"runtime": {"type": "http", "url": step_server.route("/two", two)}, "after": ["one"]}})
    base_dsn = str(POSTGRES_URL).split("?")[0]
    schema = f"frozen_{os.getpid()}_{time.time_ns()}"
    url = f"{base_dsn}?schema={schema}"
    subprocess.run([STEPFLOW, "migrate", "--db", url], check=True, capture_output=True, timeout=60)
    admin = await asyncpg.connect(base_dsn, server_settings={"search_path": schema})
    env = {"STEPFLOW_LEASE_SECONDS": "2", "STEPFLOW_BACKOFF_BASE": "0.05"}
    try:
        port = free_port()
        api = Proc("api", ["serve", "--no-workers", "--port", str(port), "--db", url, "-f", str(workflow),
                           "--signing-key", SIGNING_KEY, "--event-key", EVENT_KEY], tmp_path, env)
        procs.append(api)
        await wait_http(f"http://127.0.0.1:{port}/health", api)
        worker_a = Proc("worker-a", ["worker", "--db", url], tmp_path, env)
        procs.append(worker_a)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/e/{EVENT_KEY}",
                                 json={"name": "test/frozen", "data": {}}) as resp:
                assert resp.status == 200, await resp.text()
        await asyncio.wait_for(first_arrived.wait(), 30)
        os.kill(worker_a.pid, signal.SIGSTOP)
        answer_first.set()  # the answer waits in A's socket while A is frozen

        worker_b = Proc("worker-b", ["worker", "--db", url], tmp_path, env)
        procs.append(worker_b)
        await asyncio.wait_for(second_arrived.wait(), 30)  # A's lease expired: B took the step over

        async def step_one() -> Any:
            return await admin.fetchrow("SELECT status, attempts, output, error FROM steps WHERE step_id='one'")

        before = await step_one()
        assert before["status"] == "running" and before["attempts"] == 2, dict(before)
        os.kill(worker_a.pid, signal.SIGCONT)
        await asyncio.sleep(1.5)  # A reads its late answer and tries to record it
        assert worker_a.alive(), worker_a.log
        during = await step_one()
        assert dict(during) == dict(before), "the frozen worker's late answer reached the step"

        answer_second.set()
        await wait_until(lambda: admin.fetchval("SELECT status='COMPLETED' FROM runs"), 30, "the run to complete")
        await asyncio.sleep(0.5)  # anything still to come from A would land now
        after = await step_one()
        output = admin_unpack(after["output"])
        assert after["status"] == "completed" and after["error"] is None, dict(after)
        assert output == {"status": 200, "body": {"who": "takeover"}}, output
        (seen,) = [p["steps"]["one"] for p in step_server.calls["/two"]]  # what the run used
        assert "takeover" in json.dumps(seen) and "frozen" not in json.dumps(seen), seen
        assert len(step_server.calls["/one"]) == 2 and len(step_server.calls["/two"]) == 1
        assert await admin.fetchval("SELECT COUNT(*) FROM jobs") == 0
        assert worker_a.alive() and worker_b.alive()
    finally:
        answer_first.set()
        answer_second.set()
        for proc in procs:
            proc.stop()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def admin_unpack(blob: Any) -> Any:
    from stepflow import codec

    return codec.unpack(bytes(blob)) if blob is not None else None


# --- SQLite on a full disk ---------------------------------------------------------------------------------


async def test_sqlite_on_a_full_disk_refuses_writes_clearly_keeps_everything_and_recovers(
        tmp_path: Path, step_server: StepServer, procs: list[Proc]) -> None:
    hold = asyncio.Event()  # the steps of runs started just before the disk fills finish while it is full

    async def quick(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        n = payload["event"]["data"]["n"]
        if 1000 <= n < 2000:
            await hold.wait()
        return web.json_response({"status": 200, "body": {"n": n}})

    workflow = write_workflow(tmp_path / "wf.json", "quick", "test/disk",
                              {"one": {"runtime": {"type": "http", "url": step_server.route("/one", quick)}}})
    disk = SmallDisk("16m")
    try:
        db = disk.path / "s.db"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = Proc("dev", ["dev", "--port", str(port), "--db", str(db), "-f", str(workflow),
                              "--backoff-base", "0.05"], tmp_path)
        procs.append(server)
        await wait_http(f"{base}/health", server)
        acknowledged: list[str] = []
        padding = "x" * 16384

        async with aiohttp.ClientSession() as http:
            async def send(event_id: str, n: int) -> tuple[int, Any]:
                event = {"id": event_id, "name": "test/disk", "data": {"n": n, "padding": padding}}
                async with http.post(f"{base}/e/x", json=event) as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        acknowledged.append(event_id)
                    return resp.status, body

            async def completed() -> int:
                async with http.get(f"{base}/v1/runs?status=Completed&limit=500") as resp:
                    assert resp.status == 200, await resp.text()
                    return len((await resp.json())["data"])

            for i in range(30):
                assert (await send(f"before-{i}", i))[0] == 200
            await wait_until(lambda: completed_is(completed, 30), 20, "30 runs to complete")

            for i in range(10):  # runs whose steps are executing when the disk fills up
                assert (await send(f"held-{i}", 1000 + i))[0] == 200
            await wait_until(lambda: len(step_server.calls.get("/one", [])) == 40, 20, "10 steps in flight")

            filler = disk.fill()
            refusal: tuple[int, Any] | None = None
            for i in range(2000):  # writes go on in the space SQLite already has, until they cannot
                status, body = await send(f"full-{i}", 3000 + i)
                if status != 200:
                    refusal = (status, body)
                    refused_id, refused_n = f"full-{i}", 1000 + i
                    break
            assert refusal is not None, "the disk never filled up"
            assert len(acknowledged) < 450, "too many events fit for the checks below (runs are listed by 500)"
            status, body = refusal
            assert status == 503, body
            assert body["code"] == "store_full", body
            assert "full" in body["error"] and str(db) in body["error"], body
            assert "Traceback" not in json.dumps(body)
            for _ in range(3):  # it stays refused (cleanly) while the disk is full, and the server stays up
                assert (await send(refused_id, refused_n))[0] == 503
            async with http.get(f"{base}/health") as resp:
                assert resp.status == 200
            assert await completed() >= 30  # reads still work
            # their results cannot all be written now (a small write may still fit in space SQLite holds): the
            # engine waits for the disk, without executing those steps again
            hold.set()
            await wait_until(lambda: "the database is unavailable" in server.log, 10, "the engine to notice")
            await asyncio.sleep(1.0)
            assert server.alive(), server.log

            filler.unlink()  # space again: the same event goes through now, and new ones too
            await wait_until(lambda: send_ok(send, refused_id, refused_n), 15, "a write after freeing space",
                             interval=0.2)
            for i in range(10):
                assert (await send(f"after-{i}", 2000 + i))[0] == 200
            await wait_until(lambda: completed_is(completed, len(acknowledged)), 30,
                             f"{len(acknowledged)} runs to complete", interval=0.2)
        server.stop()
        assert server.popen.returncode == 0, server.log
        assert "Traceback" not in server.log, server.log

        with sqlite3.connect(db) as check:
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert check.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall() == [
                ("COMPLETED", len(acknowledged))]
            stored = {row[0] for row in check.execute("SELECT id FROM events")}
            assert stored == set(acknowledged)
            assert check.execute("SELECT COUNT(*) FROM steps WHERE status='completed'").fetchone()[0] == len(
                acknowledged)
        executions = calls_per_step(step_server, "/one")
        assert len(executions) == len(acknowledged) and max(executions.values()) == 1
        print(f"\n{len(acknowledged)} events acknowledged; refused while full: {body['error']}")
    finally:
        hold.set()
        for proc in procs:
            proc.stop()
        disk.close()


async def completed_is(completed: Any, count: int) -> bool:
    return bool(await completed() >= count)


async def send_ok(send: Any, event_id: str, n: int) -> bool:
    return bool((await send(event_id, n))[0] == 200)
