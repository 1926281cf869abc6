"""Why asyncpg: the PostgreSQL driver measured on the store's own kind of work.

    .venv/bin/pip install "psycopg[binary]" psycopg_pool   # only for this comparison
    .venv/bin/python bench/bench_pg_drivers.py [--ops 3000] [--concurrency 20]

Each operation is one transaction shaped like settling a step: lock a row (SELECT … FOR UPDATE), insert a
row, update a row, read a few rows back. Run with the same pool size and concurrency for asyncpg and for
psycopg 3 (async), in one run; prints transactions/s, p50/p99 and the CPU time this process used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

DSN = os.environ.get("STEPFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test").split("?")[0]
SETUP = """
CREATE TABLE runs_b (id TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0);
CREATE TABLE steps_b (run_id TEXT, step_id TEXT, output BYTEA, PRIMARY KEY (run_id, step_id));
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def with_asyncpg(schema: str, runs: list[str], ops: int, concurrency: int) -> tuple[float, list[float]]:
    import asyncpg

    pool = await asyncpg.create_pool(DSN, min_size=concurrency, max_size=concurrency,
                                     server_settings={"search_path": schema})
    lat: list[float] = []

    async def op(i: int) -> None:
        run = runs[i % len(runs)]
        t0 = time.perf_counter()
        async with pool.acquire() as c, c.transaction():
            await c.execute("SELECT 1 FROM runs_b WHERE id=$1 FOR UPDATE", run)
            await c.execute("INSERT INTO steps_b VALUES ($1, $2, $3)", run, f"s{i}", b"x" * 64)
            await c.execute("UPDATE runs_b SET n=n+1 WHERE id=$1", run)
            await c.fetch("SELECT step_id, output FROM steps_b WHERE run_id=$1 LIMIT 5", run)
        lat.append(time.perf_counter() - t0)

    rate = await _drive(op, ops, concurrency)
    await pool.close()
    return rate, lat


async def with_psycopg(schema: str, runs: list[str], ops: int, concurrency: int) -> tuple[float, list[float]]:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(DSN, min_size=concurrency, max_size=concurrency, open=False,
                               kwargs={"options": f"-c search_path={schema}"})
    await pool.open()
    lat: list[float] = []

    async def op(i: int) -> None:
        run = runs[i % len(runs)]
        t0 = time.perf_counter()
        async with pool.connection() as c, c.transaction():
            await c.execute("SELECT 1 FROM runs_b WHERE id=%s FOR UPDATE", (run,))
            await c.execute("INSERT INTO steps_b VALUES (%s, %s, %s)", (run, f"s{i}", b"x" * 64))
            await c.execute("UPDATE runs_b SET n=n+1 WHERE id=%s", (run,))
            cur = await c.execute("SELECT step_id, output FROM steps_b WHERE run_id=%s LIMIT 5", (run,))
            await cur.fetchall()
        lat.append(time.perf_counter() - t0)

    rate = await _drive(op, ops, concurrency)
    await pool.close()
    return rate, lat


async def _drive(op: object, ops: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await op(i)  # type: ignore[operator]

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(ops)))
    return ops / (time.perf_counter() - t0)


async def main(args: argparse.Namespace) -> None:
    import asyncpg

    admin = await asyncpg.connect(DSN)
    results = {}
    for name, fn in (("asyncpg", with_asyncpg), ("psycopg 3", with_psycopg)):
        schema = f"drv_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE SCHEMA {schema}; SET search_path={schema}; {SETUP}")
        runs = [f"r{i}" for i in range(500)]
        await admin.executemany(f"INSERT INTO {schema}.runs_b (id) VALUES ($1)", [(r,) for r in runs])
        cpu0 = time.process_time()
        try:
            rate, lat = await fn(schema, runs, args.ops, args.concurrency)
            results[name] = (rate, pct(lat, .5), pct(lat, .99), time.process_time() - cpu0)
        except ImportError as exc:
            results[name] = None
            print(f"{name}: not installed ({exc})")
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    await admin.close()
    print(f"\n{args.ops} step-shaped transactions, {args.concurrency} concurrent, pool {args.concurrency}")
    print(f"{'driver':10} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'client CPU s':>13}")
    for name, r in results.items():
        if r:
            print(f"{name:10} {r[0]:>8.0f} {r[1]:>8.2f} {r[2]:>8.2f} {r[3]:>13.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
