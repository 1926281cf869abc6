"""SDK benchmark: the same 3-step SDK function (a) embedded and (b) served over HTTP through the server.

    .venv/bin/python bench/bench_sdk.py [--runs 500] [--concurrency 50] [--sequential 200]

(a) embedded: `stepflow.Engine(app)` in this process on a temporary SQLite file; runs are started with
    `engine.send` and awaited with the engine's own run watcher.
(b) over HTTP: `stepflow dev` (subprocess) drives the app served by aiohttp in another subprocess
    (bench/sdk_app.py, synced with `-u`); this process is the load client (aiohttp): POST /e/…,
    GET /v1/events/{id}/runs, then GET /v1/runs/{id}?wait=30s until the run ends.

For each: `--runs` runs of the 3-step function with `--concurrency` in flight (runs/s, p50/p99 of event →
Completed), then `--sequential` single-step runs one at a time (p50/p99). Printed side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stepflow  # noqa: E402
from stepflow.engine import EngineConfig  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def load(start_and_wait: Any, runs: int, concurrency: int) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with sem:
            t0 = time.perf_counter()
            await start_and_wait("bench/sdk-three")
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(runs)))
    return runs / (time.perf_counter() - t0), latencies


async def sequential(start_and_wait: Any, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        t0 = time.perf_counter()
        await start_and_wait("bench/sdk-one")
        latencies.append(time.perf_counter() - t0)
    return latencies


async def embedded(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    from sdk_app import app

    async with stepflow.Engine(app, store=f"sqlite:///{workdir}/embedded.db",
                               config=EngineConfig(concurrency=args.concurrency * 2)) as engine:
        async def start_and_wait(name: str) -> None:
            ids = await engine.send({"name": name, "data": {}})
            run = (await engine.store.get_event_runs(ids[0]))[0]
            ended = await engine.core.wait_for_run(run.id, 60)
            assert ended is not None and ended.status.value == "COMPLETED", ended

        await sequential(start_and_wait, 20)  # warm up
        rate, lat = await load(start_and_wait, args.runs, args.concurrency)
        seq = await sequential(start_and_wait, args.sequential)
    return {"rate": rate, "lat": lat, "seq": seq}


async def over_http(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    app_port, server_port = free_port(), free_port()
    py = sys.executable
    app_proc = subprocess.Popen([py, str(HERE / "sdk_app.py"), str(app_port)])
    server = subprocess.Popen([str(Path(py).with_name("stepflow")), "dev", "--port", str(server_port),
                               "--db", f"{workdir}/http.db", "--concurrency", str(args.concurrency * 2),
                               "-u", f"http://127.0.0.1:{app_port}/api/stepflow"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{server_port}"
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as http:
            await wait_until_synced(http, base, 2)

            async def start_and_wait(name: str) -> None:
                await run_over_http(http, base, name)

            await sequential(start_and_wait, 20)
            rate, lat = await load(start_and_wait, args.runs, args.concurrency)
            seq = await sequential(start_and_wait, args.sequential)
        return {"rate": rate, "lat": lat, "seq": seq}
    finally:
        for proc in (server, app_proc):
            proc.terminate()
            proc.wait(10)


async def run_over_http(http: aiohttp.ClientSession, base: str, name: str) -> str:
    """Send one event and wait until the run it started has completed; returns the run's id."""
    async with http.post(f"{base}/e/bench", json={"name": name, "data": {}}) as resp:
        event_id = (await resp.json())["ids"][0]
    async with http.get(f"{base}/v1/events/{event_id}/runs") as resp:
        run_id: str = (await resp.json())["data"][0]["run_id"]
    while True:
        async with http.get(f"{base}/v1/runs/{run_id}?wait=30s") as resp:
            status = (await resp.json())["data"]["status"]
        if status == "Completed":
            return run_id
        assert status in ("Queued", "Running"), status


async def wait_until_synced(http: aiohttp.ClientSession, base: str, count: int, timeout: float = 60.0) -> None:
    """Until the server lists `count` functions (the apps synced with `-u` registered)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(f"{base}/v1/functions") as resp:
                if resp.status == 200 and len((await resp.json())["data"]) >= count:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not register the SDK apps' {count} functions in time")
        await asyncio.sleep(0.1)


def workload_args(description: str) -> argparse.Namespace:
    """The workload options the SDK benchmarks share."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=200)
    return parser.parse_args()


def event_loop_runner() -> Any:
    """uvloop.run when uvloop is installed (as under the server), else asyncio.run."""
    try:
        import uvloop
        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


def main() -> None:
    args = workload_args(__doc__ or "")
    run = event_loop_runner()
    with tempfile.TemporaryDirectory() as workdir:
        results = {"embedded": run(embedded(args, workdir)), "over HTTP": run(over_http(args, workdir))}
    print(f"\n3-step SDK function: {args.runs} runs, {args.concurrency} in flight; "
          f"single-step: {args.sequential} sequential runs  ({os.cpu_count()} cores)")
    print(f"{'mode':<12} {'runs/s':>8} {'p50 ms':>8} {'p99 ms':>8} | {'1-step p50':>10} {'1-step p99':>10}")
    for mode, r in results.items():
        print(f"{mode:<12} {r['rate']:>8.0f} {pct(r['lat'], .5):>8.2f} {pct(r['lat'], .99):>8.2f} | "
              f"{pct(r['seq'], .5):>10.2f} {pct(r['seq'], .99):>10.2f}")
    print("targets: embedded ≥ 1500 runs/s, 1-step p50 ≤ 1 ms; over HTTP ≥ 500 runs/s, 1-step p50 ≤ 3 ms")


if __name__ == "__main__":
    main()
