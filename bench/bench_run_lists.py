"""Run lists at scale: the time of the first and of the 1,000th page of `Store.list_runs` over 1,000,000 runs,
for each filter, on SQLite and PostgreSQL side by side (issue 13: lists must stay O(page)).

    .venv/bin/python bench/bench_run_lists.py [--runs 1000000] [--page 50] [--backends sqlite,postgres]

The runs are written straight into a migrated store's tables (ULID ids spread over 30 days, 20 functions, 5
event names, 80% Completed / 15% Failed / 5% Queued), then listed through the store's own `list_runs`,
following the cursor page after page; the 1,000th page is timed on its own. Then CEL `query` searches
(`stepflow.engine.run_search`, evaluated on the runs the indexed filters leave, at most SCAN_BUDGET per page):
the time of a first page and how many runs it read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from ulid import ULID

from stepflow import codec
from stepflow.engine.run_search import RunFilter, compile_query, list_runs
from stepflow.store import SqliteStore, Store
from stepflow.store.records import RunStatus

PG_URL = os.environ.get("STEPFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
NAMES = [f"shop/event-{i}" for i in range(5)]
DAY_MS = 24 * 3600 * 1000


def make_rows(n: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    rng = random.Random(7)
    now = int(time.time() * 1000)
    start = now - 30 * DAY_MS
    stamps = sorted(rng.randrange(start, now) for _ in range(n))
    events: list[tuple[Any, ...]] = []
    runs: list[tuple[Any, ...]] = []
    for i, ms in enumerate(stamps):
        run_id = str(ULID.from_timestamp(ms / 1000))
        event_id = f"e{i}"
        name = NAMES[i % len(NAMES)]
        payload = codec.pack({"name": name, "data": {"tenant": f"t{i % 100}", "n": i}, "ts": ms})
        events.append((event_id, name, payload, ms, ms))
        roll = rng.random()
        status = "COMPLETED" if roll < 0.8 else "FAILED" if roll < 0.95 else "QUEUED"
        runs.append((run_id, f"fn-{i % 20}", 1, "app", event_id, status, ms))
    return events, runs, now


async def fill_sqlite(path: Path, events: list[tuple[Any, ...]], runs: list[tuple[Any, ...]]) -> Store:
    store = SqliteStore(path)
    await store.open()
    await store.close()
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO events (id, name, payload, ts, received_at) VALUES (?, ?, ?, ?, ?)", events)
    db.executemany("INSERT INTO runs (id, function_id, function_version, app_id, event_id, status, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", runs)
    db.commit()
    db.execute("ANALYZE")
    db.close()
    store = SqliteStore(path)
    await store.open()
    return store


async def fill_postgres(events: list[tuple[Any, ...]], runs: list[tuple[Any, ...]]) -> Store:
    import asyncpg

    from stepflow.store.postgres import PostgresStore

    schema = f"bench_lists_{int(time.time())}"
    base = PG_URL.split("?")[0]
    store = PostgresStore(f"{base}?schema={schema}")
    await store.migrate()
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await conn.copy_records_to_table("events", records=events, columns=["id", "name", "payload", "ts",
                                                                            "received_at"])
        await conn.copy_records_to_table("runs", records=runs, columns=["id", "function_id", "function_version",
                                                                        "app_id", "event_id", "status",
                                                                        "created_at"])
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    await store.open()
    store.bench_schema = schema  # type: ignore[attr-defined]
    return store


async def drop_postgres(store: Store) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL.split("?")[0])
    try:
        await conn.execute(f"DROP SCHEMA {store.bench_schema} CASCADE")  # type: ignore[attr-defined]
    finally:
        await conn.close()


async def pages(store: Store, page: int, **filters: Any) -> tuple[float, float, int]:
    """ms of the first page, ms of the 1,000th page (nan if there are fewer), pages walked."""
    t0 = time.perf_counter()
    rows = await store.list_runs(limit=page, **filters)
    first = (time.perf_counter() - t0) * 1000
    walked, thousandth = 1, float("nan")
    while len(rows) == page and walked < 1000:
        cursor = rows[-1].id
        t0 = time.perf_counter()
        rows = await store.list_runs(limit=page, cursor=cursor, **filters)
        walked += 1
        if walked == 1000:
            thousandth = (time.perf_counter() - t0) * 1000
    return first, thousandth, walked


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    t0 = time.perf_counter()
    events, runs, now = make_rows(args.runs)
    print(f"generated {args.runs:,} runs in {time.perf_counter() - t0:.1f}s; page size {args.page}")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("no filter", {}),
        ("status=Failed", {"status": RunStatus.FAILED}),
        ("function_id", {"function_id": "fn-3"}),
        ("status+function", {"status": RunStatus.COMPLETED, "function_id": "fn-3"}),
        ("event_name", {"event_name": NAMES[2]}),
        ("last 10 days", {"created_from": now - 10 * DAY_MS}),
        ("days 20..10 ago", {"created_from": now - 20 * DAY_MS, "created_until": now - 10 * DAY_MS}),
    ]
    queries: list[tuple[str, RunFilter]] = [
        ("1% match", RunFilter(query='event.data.tenant == "t7"')),
        ("no match", RunFilter(query='event.data.tenant == "nobody"')),
        ("fn + 50% match", RunFilter(function_id="fn-3", query="event.data.n % 40 == 3")),
        ("Failed + 1%", RunFilter(status=RunStatus.FAILED, query='event.data.tenant == "t7"')),
    ]
    compile_query("true")  # import the CEL library now (0.1 s), not inside the first timed search
    results: dict[str, dict[str, tuple[float, float, int]]] = {}
    searched: dict[str, dict[str, tuple[float, int, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            t0 = time.perf_counter()
            store = await (fill_sqlite(Path(tmp) / "lists.db", events, runs) if backend == "sqlite"
                           else fill_postgres(events, runs))
            print(f"{backend}: loaded in {time.perf_counter() - t0:.1f}s")
            try:
                results[backend] = {name: await pages(store, args.page, **filters) for name, filters in cases}
                searched[backend] = {name: await search(store, args.page, where) for name, where in queries}
            finally:
                await store.close()
                if backend == "postgres":
                    await drop_postgres(store)
    backends = list(results)
    print(f"\n{'filter':<18}" + "".join(f"{b + ' 1st (ms)':>20}{b + ' 1000th (ms)':>22}" for b in backends))
    for name, _ in cases:
        row = f"{name:<18}"
        for b in backends:
            first, thousandth, walked = results[b][name]
            deep = f"{thousandth:.2f}" if walked >= 1000 else f"({walked} pages)"
            row += f"{first:>20.2f}{deep:>22}"
        print(row)
    print(f"\n{'query (1st page)':<18}" + "".join(f"{b + ' ms':>16}{'found':>8}{'read':>8}" for b in backends))
    for name, _ in queries:
        print(f"{name:<18}" + "".join(f"{searched[b][name][0]:>16.1f}{searched[b][name][1]:>8}"
                                      f"{searched[b][name][2]:>8}" for b in backends))


async def search(store: Store, page: int, where: RunFilter) -> tuple[float, int, int]:
    """ms of a first page of a query search, runs found, runs read."""
    t0 = time.perf_counter()
    result = await list_runs(store, where, limit=page)
    return (time.perf_counter() - t0) * 1000, len(result.runs), result.scanned


if __name__ == "__main__":
    asyncio.run(main())
