"""Durable endpoints benchmark: what the middleware adds to a request, with checkpoints really going out.

    .venv/bin/python bench/bench_endpoints.py [--requests 2000] [--warmup 200] [--block 250]
                                              [--concurrency 50] [--concurrent-requests 2000]

Three processes share the machine:
  - `stepflow dev` (a subprocess; temporary SQLite file, a free port) receives the checkpoints;
  - the API (this script with --serve, a subprocess, aiohttp on uvloop) serves the same handler twice, on two
    ports: **durable** — `@endpoints.durable` behind `provider.aiohttp_middleware`, three `step.run` calls —
    and **plain** — an ordinary aiohttp handler calling the same three functions, no stepflow at all;
  - this script, the load client (aiohttp, one keep-alive connection per in-flight request).

(a) Sequential: `--requests` requests to each, one at a time, after `--warmup` uncounted ones, in alternating
    blocks of `--block` (plain, durable, plain, …) so that drift on the machine hits both alike. Between blocks
    the API drains its checkpoint buffer (`await provider.wait()`; not part of any request's latency, its CPU
    counted for the durable block), so a durable block's background work does not spill into the next block.
(b) Concurrent (`--concurrency` > 0): `--concurrent-requests` to each with `--concurrency` in flight.

`--steps async` makes all three step functions coroutines (by default two are plain functions, which
`step.run` runs in a worker thread); `--loop asyncio` runs the API on asyncio's own loop instead of uvloop.

Latency is the client's (monotonic clock, request sent → body read). "in-process" is what an outermost
timing middleware in the API measured around the rest of the middleware chain and the handler (so it
excludes HTTP parsing and the client). CPU is the API process's user+system time per request, including its
background checkpointing. "Everything else on the machine" is CPU used by other processes during the phase
(from /proc/stat): non-zero means the figures were disturbed. At the end every checkpoint must have been
delivered and a sample run must show three completed steps (else the script exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FN_ID = "bench-checkout"

# --- the handler, twice -----------------------------------------------------------------------------------


def validate(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "valid": True, "items": [{"sku": "sku_1", "qty": 2, "price": 2100}]}


async def price(order: dict[str, Any]) -> dict[str, Any]:
    total = sum(item["qty"] * item["price"] for item in order["items"])
    return {"order_id": order["order_id"], "total": total, "currency": "eur"}


def confirm(priced: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": priced["order_id"], "confirmation": f"cf_{priced['order_id']}", "total": priced["total"]}


async def validate_async(order_id: str) -> dict[str, Any]:
    return validate(order_id)


async def confirm_async(priced: dict[str, Any]) -> dict[str, Any]:
    return confirm(priced)


async def plain_handler(request: web.Request) -> web.Response:
    order = validate(request.query.get("order", "o"))
    priced = await price(order)
    return web.json_response(confirm(priced))


async def plain_handler_async(request: web.Request) -> web.Response:
    order = await validate_async(request.query.get("order", "o"))
    priced = await price(order)
    return web.json_response(await confirm_async(priced))


def make_durable_handler(all_async: bool) -> Any:
    from stepflow import endpoints

    first, last = (validate_async, confirm_async) if all_async else (validate, confirm)

    @endpoints.durable(id=FN_ID)
    async def durable_handler(request: web.Request, step: Any) -> web.Response:
        order = await step.run("validate", first, request.query.get("order", "o"))
        priced = await step.run("price", price, order)
        confirmed = await step.run("confirm", last, priced)
        return web.json_response(confirmed)

    return durable_handler


@web.middleware
async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost: the time spent in the rest of the chain (stepflow's middleware, the handler)."""
    t0 = time.perf_counter()
    response: web.StreamResponse = await handler(request)
    response.headers["X-Handler-Us"] = str(int((time.perf_counter() - t0) * 1e6))
    return response


async def serve(plain_port: int, durable_port: int, base_url: str, all_async: bool) -> None:
    """The API process: both apps, and /_bench/drain on the durable one."""
    import stepflow
    from stepflow import endpoints

    client = stepflow.Client(base_url)
    provider = endpoints.setup(domain=f"http://127.0.0.1:{durable_port}", client=client, dev=True)

    async def drain(request: web.Request) -> web.Response:
        drained = await provider.wait(60)
        cp = provider.checkpointer
        return web.json_response({"drained": drained, "sent": cp.sent, "failures": cp.failures,
                                  "refused": getattr(cp, "refused", 0), "pending": cp.pending()})

    plain = web.Application(middlewares=[timing])
    plain.router.add_get("/checkout", plain_handler_async if all_async else plain_handler)
    durable = web.Application(middlewares=[timing, provider.aiohttp_middleware])
    durable.router.add_get("/checkout", make_durable_handler(all_async))
    durable.router.add_get("/_bench/drain", drain)
    runners = []
    for app, port in ((plain, plain_port), (durable, durable_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()
    await provider.wait(10)
    await provider.close()


# --- the load client --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds used by everything on the machine so far (all cores)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(parts) - parts[3] - parts[4]) / CLK_TCK


class Disturbance:
    """CPU used during a phase by the three processes of the benchmark, and by everything else."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.machine0 = machine_busy()
        self.ours0 = sum(cpu_seconds(pid) for pid in pids)

    def report(self) -> str:
        wall = time.perf_counter() - self.t0
        ours = sum(cpu_seconds(pid) for pid in self.pids) - self.ours0
        others = max(0.0, machine_busy() - self.machine0 - ours)
        return (f"CPU during the phase: benchmark processes {ours / wall:.2f} cores, everything else on the "
                f"machine {others / wall:.2f} cores (of {os.cpu_count()})")


class Sample:
    def __init__(self) -> None:
        self.client: list[float] = []   # ms
        self.server: list[float] = []   # ms
        self.cpu = 0.0                   # API process CPU seconds
        self.count = 0
        self.wall = 0.0


async def one(http: aiohttp.ClientSession, url: str, sample: Sample | None, i: int) -> None:
    t0 = time.perf_counter()
    async with http.get(url, params={"order": f"o{i}"}) as resp:
        body = await resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200 or b"confirmation" not in body:
            raise SystemExit(f"{url}: {resp.status} {body[:300]!r}")
        if sample is not None:
            sample.client.append(elapsed * 1000)
            sample.server.append(int(resp.headers["X-Handler-Us"]) / 1000)
            sample.count += 1


async def drain(http: aiohttp.ClientSession, durable: str) -> dict[str, Any]:
    async with http.get(f"{durable}/_bench/drain") as resp:
        data: dict[str, Any] = await resp.json()
    if not data["drained"]:
        raise SystemExit(f"checkpoints not drained: {data}")
    return data


async def run_client(args: argparse.Namespace, api_pid: int, server_pid: int, urls: dict[str, str],
                     base: str) -> None:
    durable_root = urls["durable"].rsplit("/", 1)[0]
    seq = {name: Sample() for name in urls}
    conc = {name: Sample() for name in urls}
    load_b: dict[str, str] = {}
    other_cpu = {"api": 0.0, "server": 0.0}
    connector = aiohttp.TCPConnector(limit=max(1, args.concurrency) * 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        for url in urls.values():  # warm-up, not counted
            for i in range(args.warmup):
                await one(http, url, None, i)
        await drain(http, durable_root)
        pids = [api_pid, server_pid, os.getpid()]
        disturbance_a = Disturbance(pids)

        # (a) sequential, alternating blocks
        done = dict.fromkeys(urls, 0)
        while any(done[n] < args.requests for n in urls):
            for name, url in urls.items():
                n = min(args.block, args.requests - done[name])
                if n <= 0:
                    continue
                s = seq[name]
                c0, sc0, t0 = cpu_seconds(api_pid), cpu_seconds(server_pid), time.perf_counter()
                for i in range(n):
                    await one(http, url, s, done[name] + i)
                if name == "durable":  # the background work belongs to the durable block
                    await drain(http, durable_root)
                s.wall += time.perf_counter() - t0
                s.cpu += cpu_seconds(api_pid) - c0
                if name == "durable":
                    other_cpu["server"] += cpu_seconds(server_pid) - sc0
                done[name] += n
        load_a = disturbance_a.report()

        # (b) concurrent
        if args.concurrency > 0:
            for name, url in urls.items():
                s = conc[name]
                sem = asyncio.Semaphore(args.concurrency)

                async def limited(i: int, url: str = url, s: Sample = s,
                                  sem: asyncio.Semaphore = sem) -> None:
                    async with sem:
                        await one(http, url, s, i)

                c0, t0, disturbance_b = cpu_seconds(api_pid), time.perf_counter(), Disturbance(pids)
                await asyncio.gather(*(limited(i) for i in range(args.concurrent_requests)))
                if name == "durable":
                    await drain(http, durable_root)
                s.wall = time.perf_counter() - t0
                s.cpu = cpu_seconds(api_pid) - c0
                load_b[name] = disturbance_b.report()

        final = await drain(http, durable_root)
        # a sample run, as the REST API shows it
        async with http.get(f"{base}/v1/runs", params={"function_id": FN_ID, "limit": "1"}) as resp:
            runs = (await resp.json())["data"]
        run = runs[0] if runs else None
        steps: list[Any] = []
        if run is not None:
            async with http.get(f"{base}/v1/runs/{run['run_id']}/steps") as resp:
                steps = (await resp.json())["data"]

    # --- report ---
    total_durable = args.warmup + args.requests + (args.concurrent_requests if args.concurrency > 0 else 0)
    print(f"\nsequential: {args.requests} requests each, one at a time, alternating blocks of {args.block} "
          f"(after {args.warmup} warm-up each)")
    print(f"  {'latency (ms)':<26} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7} {'mean':>7}")
    for name in urls:
        for label, values in ((f"{name}  client", seq[name].client), (f"{name}  in-process", seq[name].server)):
            print(f"  {label:<26} {pct(values, .5):>7.3f} {pct(values, .9):>7.3f} {pct(values, .99):>7.3f} "
                  f"{pct(values, .999):>7.3f} {max(values):>7.3f} {sum(values) / len(values):>7.3f}")
    p = {name: (pct(seq[name].client, .5), pct(seq[name].client, .99)) for name in urls}
    ps = {name: (pct(seq[name].server, .5), pct(seq[name].server, .99)) for name in urls}
    print(f"  added by stepflow, client:      p50 {p['durable'][0] - p['plain'][0]:+.3f} ms   "
          f"p99 {p['durable'][1] - p['plain'][1]:+.3f} ms")
    print(f"  added by stepflow, in-process:  p50 {ps['durable'][0] - ps['plain'][0]:+.3f} ms   "
          f"p99 {ps['durable'][1] - ps['plain'][1]:+.3f} ms")
    for name in urls:
        s = seq[name]
        print(f"  API process CPU per request, {name:<8} {s.cpu / s.count * 1000:.3f} ms"
              + (" (incl. background checkpointing)" if name == "durable" else ""))
    print(f"  stepflow server CPU per durable request (storing its checkpoints): "
          f"{other_cpu['server'] / seq['durable'].count * 1000:.3f} ms")
    print(f"  {load_a}")

    if args.concurrency > 0:
        print(f"\nconcurrent: {args.concurrent_requests} requests each, {args.concurrency} in flight")
        print(f"  {'':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'in-proc p50':>12} {'CPU/req ms':>11}")
        for name in urls:
            s = conc[name]
            print(f"  {name:<10} {s.count / s.wall:>8.0f} {pct(s.client, .5):>8.2f} {pct(s.client, .99):>8.2f} "
                  f"{pct(s.server, .5):>12.3f} {s.cpu / s.count * 1000:>11.3f}")
        for name in urls:
            print(f"  {name}: {load_b[name]}")

    print(f"\ncheckpoints: {final['sent']} delivered ({total_durable} durable requests x 5 = "
          f"{total_durable * 5} expected), {final['failures']} failed posts, {final['refused']} refused, "
          f"{final['pending']} pending")
    if run is not None:
        print(f"sample run {run['run_id']}: {run['status']}, steps "
              f"{[(st['step_id'], st['status']) for st in steps]}")
    ok = (final["sent"] == total_durable * 5 and final["refused"] == 0 and run is not None
          and run["status"] == "Completed" and [st["step_id"] for st in steps] == ["validate", "price", "confirm"])
    added = p["durable"][0] - p["plain"][0]
    print(f"\ntarget: <= 1 ms added at p50   measured {added:+.3f} ms (client), "
          f"{ps['durable'][0] - ps['plain'][0]:+.3f} ms (in-process) -> {'met' if added <= 1.0 else 'MISSED'}")
    if not ok:
        raise SystemExit("FAILED: checkpoints or runs missing (see above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests to each [2000]")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--block", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=50, help="in flight in phase (b); 0 skips it [50]")
    parser.add_argument("--concurrent-requests", type=int, default=2000)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the API's event loop")
    parser.add_argument("--steps", choices=["mixed", "async"], default="mixed",
                        help="mixed: validate and confirm are plain functions (a step runs those in a worker "
                             "thread), price a coroutine; async: all three coroutines [mixed]")
    parser.add_argument("--serve", nargs=3, metavar=("PLAIN_PORT", "DURABLE_PORT", "BASE_URL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        runner: Any = asyncio.run
        if args.loop == "uvloop":
            import uvloop
            runner = uvloop.run
        runner(serve(int(args.serve[0]), int(args.serve[1]), args.serve[2], args.steps == "async"))
        return

    import uvloop

    server_port, plain_port, durable_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{server_port}"
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="stepflow-bench-ep-") as workdir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}
        server = subprocess.Popen([str(Path(py).with_name("stepflow")), "dev", "--port", str(server_port),
                                   "--db", f"{workdir}/bench.db"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env)
        api = subprocess.Popen([py, __file__, "--loop", args.loop, "--steps", args.steps, "--serve", str(plain_port),
                                str(durable_port), base], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert api.stdout is not None
            if api.stdout.readline().strip() != "ready":
                raise SystemExit("the API process did not start")
            deadline = time.monotonic() + 20
            import urllib.request

            while True:
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("stepflow dev did not start") from None
                    time.sleep(0.1)
            print(f"durable endpoints benchmark — {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                  f"{platform.system()} {platform.release()}, load average {os.getloadavg()[0]:.2f}")
            print(f"stepflow dev at {base} (SQLite {workdir}/bench.db); API on {args.loop}: "
                  f"plain :{plain_port}, durable :{durable_port}; handler: 3 steps (validate, price, confirm), "
                  f"{'all coroutines' if args.steps == 'async' else 'validate and confirm plain functions'}")
            urls = {"plain": f"http://127.0.0.1:{plain_port}/checkout",
                    "durable": f"http://127.0.0.1:{durable_port}/checkout"}
            uvloop.run(run_client(args, api.pid, server.pid, urls, base))
        finally:
            for proc in (api, server):
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    main()
