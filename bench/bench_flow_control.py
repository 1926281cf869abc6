"""Flow control's cost and fairness, side by side in one run, on an embedded engine (SQLite by default, or
PostgreSQL with --backend postgres).

    .venv/bin/python bench/bench_flow_control.py [--runs 500] [--in-flight 50] [--backend sqlite|postgres]
                                                 [--backlog 10000] [--repeat 3]

(a) W1 — `--runs` three-step workflows (a → b → c, in-process steps that answer at once: what is measured is the
    engine and its store), `--in-flight` at a time, under three configurations of the same function:
      none          no flow control
      concurrency   {"limit": 5, "key": "event.data.tenant"}, the runs spread over 10 tenants (50 slots for 50
                    runs in flight: a tenant with more than 5 of them at a moment waits — the limit at work)
      concurrency-  the same with a limit of 1000: never binding, so what is left is the bookkeeping's price
      throttle      {"limit": 100000, "period": "1s"} (never binding: the price of the GCRA bookkeeping)
    printed: throughput (runs/s), p50/p99 latency (event sent → run completed), and the ratio to `none`.
(b) Fairness — tenant A queues `--backlog` runs of a function with concurrency 1 per tenant; then tenant B sends
    one. Printed: B's latency, against a lone run's latency on an idle engine, and how many of A's runs
    completed meanwhile (without fair per-key queues, B would wait behind A's whole backlog).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the in-process step handler: scaleout_steps:step

from stepflow.definitions import parse_function  # noqa: E402
from stepflow.engine import EngineConfig, EngineCore  # noqa: E402
from stepflow.store import store_from_url  # noqa: E402
from stepflow.store.base import Store  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEP = {"runtime": {"type": "inprocess", "handler": "scaleout_steps:step"}}
CONFIGS: dict[str, dict[str, Any]] = {
    "none": {},
    "concurrency": {"concurrency": [{"limit": 5, "key": "event.data.tenant"}]},
    "concurrency-": {"concurrency": [{"limit": 1000, "key": "event.data.tenant"}]},
    "throttle": {"throttle": {"limit": 100_000, "period": "1s"}},
}


def workflow(fid: str, event: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": fid, "triggers": [{"event": event}], **extra,
            "steps": {"a": STEP, "b": {**STEP, "after": ["a"]}, "c": {**STEP, "after": ["b"]}}}


async def open_store(backend: str, tmp: Path, name: str) -> Store:
    if backend == "sqlite":
        return store_from_url(str(tmp / f"{name}.db"))
    schema = f"bench_flow_{name.replace('-', '_')}_{int(time.time())}"
    store = store_from_url(f"{PG_URL}?schema={schema}")
    await store.migrate()
    store.bench_schema = schema  # type: ignore[attr-defined]
    return store


async def drop(store: Store) -> None:
    schema = getattr(store, "bench_schema", None)
    if schema:
        import asyncpg

        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


async def run_to_end(engine: EngineCore, event: dict[str, Any]) -> float:
    """Send one event, wait for its run to end; seconds from send to end."""
    started = time.perf_counter()
    [event_id] = await engine.send(event)
    while not (runs := await engine.store.get_event_runs(event_id)):
        await asyncio.sleep(0.001)
    ended = await engine.wait_for_run(runs[0].id, 60)
    assert ended is not None and ended.status.value == "COMPLETED", ended
    return time.perf_counter() - started


async def w1(backend: str, tmp: Path, name: str, runs: int, in_flight: int) -> dict[str, float]:
    store = await open_store(backend, tmp, name)
    engine = EngineCore(store, EngineConfig(concurrency=64, poll_interval=0.5))
    await engine.start()
    try:
        await engine.register(parse_function(workflow("w1", "bench/w1", CONFIGS[name]), source="bench"))
        await run_to_end(engine, {"name": "bench/w1", "data": {"tenant": "warmup"}})
        latencies: list[float] = []
        queue = iter(range(runs))

        async def worker() -> None:
            for n in queue:
                latencies.append(await run_to_end(engine, {"name": "bench/w1", "data": {"tenant": f"t{n % 10}"}}))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    finally:
        await engine.stop()
        await store.close()
        await drop(store)
    latencies.sort()
    return {"throughput": runs / elapsed, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000}


async def fairness(backend: str, tmp: Path, backlog: int) -> dict[str, float]:
    store = await open_store(backend, tmp, "fair")
    engine = EngineCore(store, EngineConfig(concurrency=64, poll_interval=0.5))
    await engine.start()
    try:
        await engine.register(parse_function(workflow("fair", "bench/fair", {
            "concurrency": [{"limit": 1, "key": "event.data.tenant"}]}), source="bench"))
        alone = sorted([await run_to_end(engine, {"name": "bench/fair", "data": {"tenant": f"solo{i}"}})
                        for i in range(20)])[10]
        for start in range(0, backlog, 500):
            await engine.send([{"name": "bench/fair", "data": {"tenant": "A", "n": n}}
                               for n in range(start, min(backlog, start + 500))])
        before = await completed(engine)
        b_latency = await run_to_end(engine, {"name": "bench/fair", "data": {"tenant": "B"}})
        meanwhile = await completed(engine) - before - 1
    finally:
        await engine.stop()
        await store.close()
        await drop(store)
    return {"alone": alone * 1000, "b": b_latency * 1000, "a_meanwhile": meanwhile}


async def completed(engine: EngineCore) -> int:
    total = 0
    cursor = None
    while True:
        page = await engine.store.list_runs(function_id="fair", cursor=cursor, limit=1000)
        total += sum(1 for r in page if r.status.value == "COMPLETED")
        if len(page) < 1000:
            return total
        cursor = page[-1].id


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the configurations take turns in each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"W1: {args.runs} three-step runs, {args.in_flight} in flight, {args.backend}, embedded engine; "
              f"median of {args.repeat} rounds (the configurations take turns, so drift hits them alike)")
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
        for _ in range(args.repeat):
            for name in CONFIGS:
                rounds[name].append(await w1(args.backend, Path(tmp), name, args.runs, args.in_flight))
        results = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rounds.items()}
        base = results["none"]["throughput"]
        print(f"{'config':<14}{'runs/s':>10}{'(min-max)':>16}{'p50 ms':>10}{'p99 ms':>10}{'vs none':>10}")
        for name, r in results.items():
            each = [x["throughput"] for x in rounds[name]]
            spread = f"{min(each):.0f}-{max(each):.0f}"
            print(f"{name:<14}{r['throughput']:>10.1f}{spread:>16}{r['p50']:>10.1f}{r['p99']:>10.1f}"
                  f"{r['throughput'] / base:>10.2f}")
        fair = await fairness(args.backend, Path(tmp), args.backlog)
        print(f"\nfairness: tenant A {args.backlog:,} runs queued (concurrency 1 per tenant), then tenant B sends one")
        print(f"  a lone run on an idle engine: {fair['alone']:.1f} ms; tenant B's run: {fair['b']:.1f} ms; "
              f"A's runs completed meanwhile: {fair['a_meanwhile']:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
