"""The same 3-step function written with the official Inngest Python SDK and with stepflow's SDK, both served
over HTTP and driven by one `stepflow dev`, side by side in one run.

    .venv/bin/python bench/bench_inngest_sdk.py [--runs 500] [--concurrency 50] [--sequential 200]

`stepflow dev` (subprocess, SQLite) syncs both apps with `-u`: bench/sdk_app.py (stepflow's SDK, aiohttp) and
bench/inngest_py_app.py (pip `inngest`, FastAPI under uvicorn). This process is the load client: POST /e/…,
GET /v1/events/{id}/runs, then GET /v1/runs/{id}?wait=30s until the run ends. For each SDK: `--runs` runs of
the 3-step function with `--concurrency` in flight (runs/s, p50/p99 of event → Completed, and the SDK calls
per run), then `--sequential` single-step runs one at a time (p50/p99). The two SDKs take turns on the same
server, so the figures compare the SDKs, not two machines' moods.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_sdk import (
    event_loop_runner,
    free_port,
    load,
    pct,
    run_over_http,
    sequential,
    wait_until_synced,
    workload_args,
)

SDKS = {  # label: (event prefix, app URL path, function ids)
    "stepflow SDK": ("bench/sdk", "/api/stepflow", "bench"),
    "Inngest Python SDK": ("bench/inngest", "/api/inngest", "bench-inngest"),
}


async def drive(http: aiohttp.ClientSession, base: str, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    run_ids: list[str] = []

    async def start_and_wait(name: str) -> None:
        run_ids.append(await run_over_http(http, base, name.replace("bench/sdk", prefix)))

    await sequential(start_and_wait, 20)  # warm up
    run_ids.clear()
    rate, lat = await load(start_and_wait, args.runs, args.concurrency)
    sample = run_ids[:20]
    seq = await sequential(start_and_wait, args.sequential)
    return {"rate": rate, "lat": lat, "seq": seq, "sample": sample}


async def bench(args: argparse.Namespace, workdir: str) -> dict[str, dict[str, Any]]:
    py = sys.executable
    ports = {"stepflow SDK": free_port(), "Inngest Python SDK": free_port()}
    server_port = free_port()
    base = f"http://127.0.0.1:{server_port}"
    env = {**os.environ, "INNGEST_DEV": "1", "INNGEST_BASE_URL": base}
    apps = [subprocess.Popen([py, str(HERE / "sdk_app.py"), str(ports["stepflow SDK"])], env=env),
            subprocess.Popen([py, str(HERE / "inngest_py_app.py"), str(ports["Inngest Python SDK"])], env=env)]
    urls = [f"http://127.0.0.1:{ports[label]}{path}" for label, (_, path, _) in SDKS.items()]
    server = subprocess.Popen([str(Path(py).with_name("stepflow")), "dev", "--port", str(server_port),
                               "--db", f"{workdir}/bench.db", "--concurrency", str(args.concurrency * 2),
                               *[arg for url in urls for arg in ("-u", url)]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as http:
            await wait_until_synced(http, base, 4)
            results = {}
            for label, (prefix, _, _) in SDKS.items():
                results[label] = await drive(http, base, prefix, args)
                calls = []
                for run_id in results[label]["sample"]:
                    async with http.get(f"{base}/v1/runs/{run_id}/steps") as resp:
                        calls.append(len((await resp.json())["data"]))
                results[label]["steps"] = sum(calls) / max(1, len(calls))
        return results
    finally:
        for proc in (server, *apps):
            proc.terminate()
            proc.wait(10)


def main() -> None:
    args = workload_args(__doc__ or "")
    run = event_loop_runner()
    with tempfile.TemporaryDirectory() as workdir:
        results = run(bench(args, workdir))
    print(f"\n3-step function over HTTP against `stepflow dev`: {args.runs} runs, {args.concurrency} in flight; "
          f"single-step: {args.sequential} sequential runs  ({os.cpu_count()} cores)")
    print(f"{'SDK':<20} {'runs/s':>8} {'p50 ms':>8} {'p99 ms':>8} | {'1-step p50':>10} {'1-step p99':>10}")
    for label, r in results.items():
        print(f"{label:<20} {r['rate']:>8.0f} {pct(r['lat'], .5):>8.2f} {pct(r['lat'], .99):>8.2f} | "
              f"{pct(r['seq'], .5):>10.2f} {pct(r['seq'], .99):>10.2f}")


if __name__ == "__main__":
    main()
