"""Lambda benchmark: a warm invoke through the local Lambda next to calling the handler in-process.

    .venv/bin/python bench/bench_lambda.py [--calls 1000] [--parallel 2000] [--in-flight 4] [--warmup 50]

One step (`echo`, it answers `{"status": 200, "body": {"ok": true}}`) packaged with `stepflow package lambda`'s
code (stepflow.kit.lambda_zip.build_zip), measured in the same run as:

  in-process  the zip's own handler, `stepflow_handler.handler(event, None)`, called directly in this process
              (unpacked from the zip) — what the Lambda runtime calls, without any transport
  lambda      the lambda runtime's driver (stepflow.runtimes.aws_lambda.LambdaRuntime: SigV4 signing with
              botocore, the Invoke API over HTTP, reading and interpreting the answer) calling
              `stepflow lambda serve` (a subprocess), whose warm awslambdaric worker processes run the handler

after warm-up (the workers are started and warm). Printed: p50/p90/p99 latency and calls/s of `--calls`
sequential calls, the same for `--parallel` calls with `--in-flight` at once, the CPU each process used per
call, and the driver's SigV4 signing cost.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from stepflow.kit.lambda_zip import build_zip
from stepflow.protocol.answers import interpret
from stepflow.protocol.contract import StepContext
from stepflow.runtimes.aws_lambda import LambdaRuntime
from stepflow.runtimes.base import Invocation

STEP = '''import time


def echo(payload):
    hold = payload["event"]["data"].get("hold")
    if hold:  # only in the warm-up
        time.sleep(hold)
    return {"status": 200, "body": {"ok": True, "step": payload["ctx"]["step_id"]}}
'''
DOCUMENT: dict[str, Any] = {"event": {"id": "01J0000000000000000000000", "name": "bench/lambda", "data": {"n": 1},
                      "ts": 1714056405337},
            "steps": {"prepare": {"status": 200, "body": {"rows": 98}}},
            "ctx": {"run_id": "01J0000000000000000000001", "function_id": "bench", "app_id": "bench",
                    "step_id": "echo", "attempt": 0, "max_attempts": 5}}
EXPECTED = {"ok": True, "step": "echo"}
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def cpu_seconds(pid: int) -> float:
    """user + system CPU of one process, from /proc (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU used during a phase by this process, the local Lambda server and its worker processes."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def sample(self) -> dict[str, float]:
        sample = {"bench": time.process_time()}
        if self.server_pid is not None:
            sample["server"] = cpu_seconds(self.server_pid)
            sample["workers"] = sum(cpu_seconds(p) for p in children(self.server_pid))
        return sample

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in after}


def load_handler(unpacked: Path) -> Callable[[dict[str, Any], Any], Any]:
    """The zip's stepflow_handler module, imported from the unpacked zip (it imports the step from there)."""
    sys.path.append(str(unpacked))  # appended: this process's own stepflow stays the one imported
    spec = importlib.util.spec_from_file_location("stepflow_handler", unpacked / "stepflow_handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler  # type: ignore[no-any-return]


def bench_in_process(handler: Callable[[dict[str, Any], Any], Any], args: argparse.Namespace) -> dict[str, Any]:
    raw = orjson.dumps(DOCUMENT)
    for _ in range(args.warmup):
        handler(orjson.loads(raw), None)
    meter = CpuMeter(None)
    before = meter.sample()
    latencies = []
    t0 = time.perf_counter()
    for _ in range(args.calls):
        t = time.perf_counter()
        answer = handler(orjson.loads(raw), None)  # as awslambdaric hands it over: a freshly decoded event
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    assert answer == {"status": 200, "body": EXPECTED}, answer
    return {"seq": latencies, "seq_rate": args.calls / elapsed, "seq_cpu": meter.used(before, meter.sample())}


def invocation(endpoint: str, hold: float = 0) -> Invocation:
    ctx = StepContext(run_id="r", function_id="bench", app_id="bench", step_id="echo", attempt=0, max_attempts=5)
    document = {**DOCUMENT, "event": {**DOCUMENT["event"], "data": {"n": 1, "hold": hold}}} if hold else DOCUMENT
    return Invocation(input=orjson.dumps(document), options={"function": "echo", "endpoint_url": endpoint},
                      ctx=ctx, timeout=30, max_output_bytes=1024 * 1024)


async def timed_calls(call: Callable[[], Awaitable[None]], count: int, in_flight: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    sem = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with sem:
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    if in_flight == 1:
        for _ in range(count):
            await one()
    else:
        await asyncio.gather(*(one() for _ in range(count)))
    return latencies, count / (time.perf_counter() - t0)


async def bench_local_lambda(endpoint: str, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    runtime = LambdaRuntime()
    inv = invocation(endpoint)

    async def call() -> None:
        answer = interpret(await runtime.invoke(inv), sdk_call=False, max_output_bytes=inv.max_output_bytes)
        assert answer.response.status == 200 and answer.response.body == EXPECTED, answer.response

    async def hold() -> None:
        await runtime.invoke(invocation(endpoint, hold=0.3))

    try:
        # warm-up: `--in-flight` calls at once that each hold their worker for 0.3 s, twice, so that the
        # pool starts that many workers and each has finished its cold start; then ordinary calls
        for _ in range(2):
            await timed_calls(hold, args.in_flight, args.in_flight)
        await timed_calls(call, args.warmup, 1)
        await timed_calls(call, args.warmup * args.in_flight, args.in_flight)
        meter = CpuMeter(server_pid)
        before = meter.sample()
        seq, seq_rate = await timed_calls(call, args.calls, 1)
        middle = meter.sample()
        par, par_rate = await timed_calls(call, args.parallel, args.in_flight)
        after = meter.sample()
        workers = len(children(server_pid))
        # what the driver spends signing one request (botocore's SigV4), on this process's CPU
        t0 = time.perf_counter()
        for _ in range(1000):
            runtime._signed_request(inv)
        signing = (time.perf_counter() - t0) / 1000
    finally:
        await runtime.close()
    return {"seq": seq, "seq_rate": seq_rate, "seq_cpu": CpuMeter.used(before, middle), "par": par,
            "par_rate": par_rate, "par_cpu": CpuMeter.used(middle, after), "workers": workers, "signing": signing}


def start_local_lambda(functions: Path, workdir: Path, max_workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("stepflow")), "lambda", "serve", str(functions),
                             "--port", str(port), "--max-workers", str(max_workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, "TMPDIR": str(workdir)})  # the unpacked zip lands in workdir
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"stepflow lambda serve exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("stepflow lambda serve did not listen within 30 s") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # its clean stop: the awslambdaric workers are stopped too
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(args: argparse.Namespace, direct: dict[str, Any], remote: dict[str, Any]) -> None:
    def cpu(used: dict[str, float], calls: int) -> str:
        parts = {"bench": "this process", "server": "lambda serve", "workers": "workers"}
        return ", ".join(f"{parts[k]} {v / calls * 1e6:.0f}" for k, v in used.items())

    print(f"\nlambda benchmark — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.2f}; {args.warmup} warm-up calls not counted")
    print(f"{'':34} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'calls/s':>9}   CPU per call (µs)")
    rows = [("handler in-process, sequential", direct["seq"], direct["seq_rate"], direct["seq_cpu"], args.calls),
            ("local Lambda, sequential", remote["seq"], remote["seq_rate"], remote["seq_cpu"], args.calls),
            (f"local Lambda, {args.in_flight} in flight", remote["par"], remote["par_rate"], remote["par_cpu"],
             args.parallel)]
    for name, lat, rate, used, calls in rows:
        print(f"{name:34} {pct(lat, .5):>8.3f} {pct(lat, .9):>8.3f} {pct(lat, .99):>8.3f} {rate:>9.0f}   "
              f"{cpu(used, calls)}")
    added = pct(remote["seq"], .5) - pct(direct["seq"], .5)
    print(f"the local Lambda adds {added:.2f} ms to the median call ({len(direct['seq'])} sequential calls each); "
          f"{remote['workers']} warm worker(s) at the end; SigV4 signing {remote['signing'] * 1e6:.0f} µs per "
          "call in the driver")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per mode [1000]")
    parser.add_argument("--parallel", type=int, default=2000, help="calls of the in-flight phase [2000]")
    parser.add_argument("--in-flight", type=int, default=4, help="calls at once in that phase [4]; the local "
                        "Lambda runs up to this many warm workers")
    parser.add_argument("--warmup", type=int, default=50, help="uncounted calls first [50]")
    args = parser.parse_args()
    # The driver signs with the standard AWS chain; the local Lambda checks no signature.
    os.environ.update({"AWS_ACCESS_KEY_ID": "AKIDLOCALBENCH", "AWS_SECRET_ACCESS_KEY": "local",
                       "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    os.environ.pop("AWS_PROFILE", None)

    with tempfile.TemporaryDirectory(prefix="stepflow-bench-lambda-") as tmp:
        workdir = Path(tmp)
        (workdir / "echo_step.py").write_text(STEP)
        archive = build_zip(f"{workdir / 'echo_step.py'}:echo", workdir / "functions" / "echo.zip")
        unpacked = workdir / "unpacked"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)
        direct = bench_in_process(load_handler(unpacked), args)  # before any event loop runs in this thread

        proc, endpoint = start_local_lambda(workdir / "functions", workdir, args.in_flight)
        try:
            try:
                import uvloop
                remote = uvloop.run(bench_local_lambda(endpoint, proc.pid, args))
            except ImportError:  # pragma: no cover
                remote = asyncio.run(bench_local_lambda(endpoint, proc.pid, args))
        finally:
            stop(proc)
    report(args, direct, remote)


if __name__ == "__main__":
    main()
