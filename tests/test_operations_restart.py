"""Bulk operations survive their process being killed. A real `stepflow dev` process — on a SQLite file, or on a
PostgreSQL schema in the PostgreSQL pass — is SIGKILLed in the middle of a replay and in the middle of a bulk
cancel, then started again on the same database: the operation goes on from its saved cursor once the dead
process's lease lapses. Every event is replayed exactly once, every matching run is cancelled and no other,
and the counts the API reports are exact."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import POSTGRES_URL
from process_support import StepflowProcess

STEPFLOW = Path(sys.executable).with_name("stepflow")
LEASE_SECONDS = 2   # how soon a restarted process may take over the dead one's operation


def _database(tmp_path: Path) -> str:
    """A SQLite file, or a fresh PostgreSQL schema in the PostgreSQL pass (as the other store tests choose)."""
    if os.environ.get("STEPFLOW_TEST_BACKEND") == "postgres":
        if not POSTGRES_URL:
            pytest.skip("needs STEPFLOW_TEST_POSTGRES_URL")
        return f"{str(POSTGRES_URL).split('?')[0]}?schema=restart_{os.getpid()}_{time.monotonic_ns()}"
    return str(tmp_path / "stepflow.db")


async def _drop(db: str) -> None:
    if "?schema=" in db:
        import asyncpg

        dsn, schema = db.split("?schema=")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[str, StepflowProcess, aiohttp.ClientSession]]:
    """A `stepflow dev` process (not started yet) on a migrated database with two one-step functions."""
    db = _database(tmp_path)
    subprocess.run([str(STEPFLOW), "migrate", "--db", db], check=True, capture_output=True)
    workflow = tmp_path / "functions.json"
    workflow.write_text(json.dumps({"functions": [
        {"id": name, "triggers": [{"event": f"shop/{name}"}],
         "steps": {"s": {"runtime": {"type": "inprocess", "handler": "restart_steps:echo"}}}}
        for name in ("orders", "refunds")]}))
    process = StepflowProcess(tmp_path, workflow, db=db, args=["--quiet"], env={
        "PYTHONPATH": str(Path(__file__).resolve().parent), "STEPFLOW_LEASE_SECONDS": str(LEASE_SECONDS)})
    try:
        async with aiohttp.ClientSession() as http:
            yield db, process, http
    finally:
        await process.stop()
        await _drop(db)


async def _finished(http: aiohttp.ClientSession, url: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The operation at `url` once `done` holds for it."""
    async def check() -> dict[str, Any] | None:
        state = (await _call(http, "GET", url))["data"]
        return state if done(state) else None

    return await _until(f"{url} to finish", check)  # type: ignore[no-any-return]


async def _call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with http.request(method, url, json=body) as resp:
        answer = await resp.json()
        assert resp.status < 300, (method, url, answer)
        return answer


async def _send(http: aiohttp.ClientSession, base: str, name: str, count: int) -> None:
    for start in range(0, count, 500):
        events = [{"name": name, "data": {"n": n}} for n in range(start, min(count, start + 500))]
        await _call(http, "POST", f"{base}/e/any-key", events)


async def _all_runs(http: aiohttp.ClientSession, base: str, function_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"function_id": function_id, "limit": "500", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{base}/v1/runs", params=params) as resp:
            page = await resp.json()
        runs += page["data"]
        cursor = page["cursor"]
        if cursor is None:
            return runs


async def _until(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Db:
    """The test's own connection to the processes' database, to read what they saved (even while one is dead)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pg: Any = None
        self._sqlite: sqlite3.Connection | None = None

    async def __aenter__(self) -> Db:
        if "?schema=" in self.url:
            import asyncpg

            dsn, schema = self.url.split("?schema=")
            self._pg = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        else:
            self._sqlite = sqlite3.connect(self.url, timeout=5, isolation_level=None)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()

    async def row(self, sql: str, *args: Any) -> tuple[Any, ...]:
        if self._pg is not None:
            for n in range(len(args)):
                sql = sql.replace("?", f"${n + 1}", 1)
            return tuple(await self._pg.fetchrow(sql, *args))
        assert self._sqlite is not None
        return tuple(self._sqlite.execute(sql, args).fetchone())


async def test_a_replay_whose_process_is_killed_goes_on_after_a_restart_and_starts_no_run_twice(
        tmp_path: Path) -> None:
    events = 600
    async with cluster(tmp_path) as (db, server, http):
        await server.start()
        await _send(http, server.url, "shop/orders", events)

        async def originals_done() -> bool:
            runs = await _all_runs(http, server.url, "orders")
            return len(runs) == events and all(r["status"] == "Completed" for r in runs)

        await _until("the original runs", originals_done)
        replay = (await _call(http, "POST", f"{server.url}/v2/replays", {"function_id": "orders", "rate": 150}))[
            "data"]
        assert replay["total"] == events
        url = f"{server.url}/v2/replays/{replay['id']}"
        await _finished(http, url, lambda state: state["started"] >= 150)
        await server.kill9()   # mid-way: ~4 s of replay at 150 runs/s, killed after the first second
        async with Db(db) as saved:
            status, started = await saved.row("SELECT status, succeeded FROM operations WHERE id=?", replay["id"])
            assert status == "Running" and 0 < started < events, (status, started)
            # the runs it started and the progress it saved were committed together: they agree
            assert (await saved.row("SELECT COUNT(*) FROM runs WHERE operation_id=?", replay["id"]))[0] == started

        await server.start()
        done = await _finished(http, url, lambda state: state["status"] == "Completed" and state["completed"] == events)
        assert (done["started"], done["completed"], done["failed"]) == (events, events, 0), done
        runs = await _all_runs(http, server.url, "orders")
        per_event = Counter(r["event_id"] for r in runs)
        # the original run and exactly one replayed run of every event: none lost, none started twice
        assert len(per_event) == events and set(per_event.values()) == {2}
        assert all(r["status"] == "Completed" for r in runs)


async def test_a_bulk_cancel_whose_process_is_killed_goes_on_after_a_restart_with_exact_counts(
        tmp_path: Path) -> None:
    runs_count = 12_000
    async with cluster(tmp_path) as (db, server, http):
        await server.start()
        # paused, the runs stay in flight (PAUSED) until cancelled: a backlog to cancel
        await _call(http, "POST", f"{server.url}/v2/functions/refunds/pause", {})
        await _send(http, server.url, "shop/refunds", runs_count)
        cancel = (await _call(http, "POST", f"{server.url}/v2/cancellations",
                              {"function_id": "refunds", "if": "event.data.n % 3 != 0"}))["data"]
        assert cancel["total"] == runs_count

        # a batch of 200 takes milliseconds: watch the saved progress in the database itself, and kill the process
        # as soon as its first batch is committed
        async with Db(db) as saved:
            deadline = time.monotonic() + 30
            while not (await saved.row("SELECT processed FROM operations WHERE id=?", cancel["id"]))[0]:
                assert time.monotonic() < deadline, "the bulk cancel saved no progress"
                await asyncio.sleep(0.001)
            await server.kill9()
            status, processed, cancelled = await saved.row(
                "SELECT status, processed, succeeded FROM operations WHERE id=?", cancel["id"])
            assert status == "Running" and 0 < processed < runs_count, (status, processed)  # died mid-way
            # what it cancelled and the progress it saved were committed together: they agree
            assert (await saved.row("SELECT COUNT(*) FROM runs WHERE function_id=? AND status=?", "refunds",
                                    "CANCELLED"))[0] == cancelled

        await server.start()
        done = await _finished(http, f"{server.url}/v2/cancellations/{cancel['id']}",
                               lambda state: state["status"] == "Completed")
        wanted = sum(1 for n in range(runs_count) if n % 3 != 0)
        assert (done["cancelled"], done["skipped"]) == (wanted, runs_count - wanted), done
        statuses = Counter(r["status"] for r in await _all_runs(http, server.url, "refunds"))
        assert statuses == {"Cancelled": wanted, "Paused": runs_count - wanted}
        # the cancelled ones are exactly those the condition named
        query = {"function_id": "refunds", "query": 'run.status == "Cancelled" && event.data.n % 3 == 0'}
        found, scanned = [], 0
        while True:   # a search reads at most its budget (10,000) a page: page on with the cursor
            async with http.get(f"{server.url}/v1/runs", params=query) as resp:
                page = await resp.json()
            found += page["data"]
            scanned += page["search"]["scanned"]
            if page["cursor"] is None:
                break
            query["cursor"] = page["cursor"]
        assert found == [] and scanned == runs_count
