"""Docker benchmark: what stepflow adds to a container round trip.

    .venv/bin/python bench/bench_docker.py [--sequential 50] [--parallel 48] [--in-flight 8]

Same image (stepflow-test/busybox:1, a shell step printing a Response), same Docker engine, same run:
  bare      create → start → wait → remove through the Engine API (the floor: what any driver must do)
  stepflow  a one-step workflow run through the embedded engine: event → Completed (claim, Input, create,
            start, wait, logs, remove, record the result, complete the run)
Printed: median and p90 per-step latency of sequential runs, and throughput with N in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import stepflow
from stepflow.engine import EngineConfig
from stepflow.runtimes.docker_api import DockerClient

IMAGE = "stepflow-test/busybox:1"
SCRIPT = 'echo "{\\"status\\": 200, \\"body\\": {\\"ok\\": true}}"'
COMMAND = ["sh", "-c", SCRIPT, "step"]


async def bare_once(client: DockerClient) -> float:
    t0 = time.perf_counter()
    cid = await client.create({"Image": IMAGE, "Cmd": [*COMMAND, "{}"], "NetworkDisabled": True,
                               "HostConfig": {"NetworkMode": "none"}})
    await client.start(cid)
    await client.wait(cid, None)
    await client.remove(cid)
    return time.perf_counter() - t0


async def measure(one: object, sequential: int, parallel: int, in_flight: int) -> dict[str, float]:
    for _ in range(3):
        await one()  # type: ignore[operator]  # warm up
    latencies = [await one() for _ in range(sequential)]  # type: ignore[operator]
    sem = asyncio.Semaphore(in_flight)

    async def limited() -> None:
        async with sem:
            await one()  # type: ignore[operator]

    t0 = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(parallel)))
    elapsed = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {"median": statistics.median(latencies) * 1000, "p90": ordered[int(0.9 * len(ordered))] * 1000,
            "rate": parallel / elapsed}


async def main(args: argparse.Namespace) -> None:
    client = DockerClient()
    bare = await measure(lambda: bare_once(client), args.sequential, args.parallel, args.in_flight)
    await client.close()

    fn = stepflow.workflow("bench-docker", triggers=[stepflow.event("bench/docker")], steps={
        "step": {"runtime": {"type": "docker", "image": IMAGE, "command": COMMAND}}})
    with tempfile.TemporaryDirectory() as tmp:
        async with stepflow.Engine(store=f"sqlite:///{tmp}/b.db", functions=[fn],
                                   config=EngineConfig(concurrency=args.in_flight * 2)) as engine:
            async def run_once() -> float:
                t0 = time.perf_counter()
                ids = await engine.send({"name": "bench/docker", "data": {}})
                run = (await engine.store.get_event_runs(ids[0]))[0]
                ended = await engine.core.wait_for_run(run.id, 120)
                assert ended is not None and ended.status.value == "COMPLETED", ended
                return time.perf_counter() - t0

            ours = await measure(run_once, args.sequential, args.parallel, args.in_flight)

    print(f"\ndocker steps: {args.sequential} sequential, {args.parallel} with {args.in_flight} in flight")
    print(f"{'':10} {'median ms':>10} {'p90 ms':>8} {'steps/s':>8}")
    for name, r in (("bare", bare), ("stepflow", ours)):
        print(f"{name:10} {r['median']:>10.1f} {r['p90']:>8.1f} {r['rate']:>8.1f}")
    overhead = (ours["median"] / bare["median"] - 1) * 100
    print(f"stepflow adds {overhead:+.1f}% to the median round trip "
          f"({ours['median'] - bare['median']:+.1f} ms); throughput {ours['rate'] / bare['rate'] * 100:.0f}% "
          "of bare. Target: ≤ +10%.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=48)
    parser.add_argument("--in-flight", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
