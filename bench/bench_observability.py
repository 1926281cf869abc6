"""What tracing and metrics cost, side by side in one run, on an embedded engine (SQLite by default, or
PostgreSQL with --backend postgres).

    .venv/bin/python bench/bench_observability.py [--runs 500] [--in-flight 50] [--repeat 3]
                                                  [--backend sqlite|postgres]

W1 — `--runs` three-step workflows (in-process steps that answer at once: the engine and its store are what is
measured, the worst case for any bookkeeping), `--in-flight` at a time, under four configurations taking turns
over `--repeat` rounds (medians printed):
  bare          STEPFLOW_TRACING=off, STEPFLOW_METRICS=off
  metrics       metrics on, tracing off
  traced        tracing on (a span per step attempt kept with the run, traceparent to each step), metrics on
  traced+otlp   the same, each ended run's trace exported over OTLP/HTTP to a local receiver that accepts it
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_flow_control as w1  # noqa: E402 - the same W1, store handling and run loop

from stepflow.definitions import parse_function  # noqa: E402
from stepflow.engine import EngineConfig, EngineCore  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "bare": {"tracing": False, "metrics": False},
    "metrics": {"tracing": False, "metrics": True},
    "traced": {"tracing": True, "metrics": True},
    "traced+otlp": {"tracing": True, "metrics": True, "otlp": True},
}


async def receiver() -> tuple[web.AppRunner, str, list[int]]:
    """An OTLP/HTTP endpoint that accepts every export (and counts the bytes)."""
    received: list[int] = []

    async def traces(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1/traces", received


async def one(backend: str, tmp: Path, name: str, runs: int, in_flight: int, endpoint: str) -> float:
    settings = CONFIGS[name]
    if settings.get("otlp"):
        os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
    else:
        os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    store = await w1.open_store(backend, tmp, name.replace("+", "_"))
    engine = EngineCore(store, EngineConfig(concurrency=64, poll_interval=0.5, tracing=settings["tracing"],
                                            metrics=settings["metrics"]))
    await engine.start()
    try:
        await engine.register(parse_function(w1.workflow("w1", "bench/w1", {}), source="bench"))
        await w1.run_to_end(engine, {"name": "bench/w1", "data": {}})
        queue = iter(range(runs))
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            for _ in queue:
                await w1.run_to_end(engine, {"name": "bench/w1", "data": {}})

        started = loop.time()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = loop.time() - started
    finally:
        await engine.stop()
        await store.close()
        await w1.drop(store)
    return runs / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    runner, endpoint, received = await receiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rounds: dict[str, list[float]] = {name: [] for name in CONFIGS}
            for _ in range(args.repeat):
                for name in CONFIGS:
                    rounds[name].append(await one(args.backend, Path(tmp), name, args.runs, args.in_flight,
                                                  endpoint))
    finally:
        await runner.cleanup()
    print(f"W1: {args.runs} three-step runs, {args.in_flight} in flight, {args.backend}, embedded engine; median of "
          f"{args.repeat} rounds taking turns")
    base = statistics.median(rounds["bare"])
    print(f"{'config':<14}{'runs/s':>10}{'(min-max)':>14}{'vs bare':>10}")
    for name, each in rounds.items():
        median = statistics.median(each)
        print(f"{name:<14}{median:>10.1f}{f'{min(each):.0f}-{max(each):.0f}':>14}{median / base:>10.2f}")
    print(f"OTLP: {len(received)} export request(s), {sum(received) / 1024:.0f} KiB in all")


if __name__ == "__main__":
    asyncio.run(main())
