"""Core benchmark: throughput and end-to-end latency of workflow runs whose steps are HTTP endpoints.

    .venv/bin/python bench/bench_core.py [--events 500] [--concurrency 50] [--sequential 200]

Three processes share the machine, as in production:
  - `stepflow dev` (a subprocess; temporary SQLite file, a free port), with two workflow files:
      bench-3: a → b → c (three HTTP steps), triggered by `bench/three`
      bench-1: a single HTTP step, triggered by `bench/one`
  - the step server (bench/step_server.py, a subprocess): aiohttp answering {"status": 200, "body": {...}}
  - this script, the load client (aiohttp).

(a) Load: `--events` events to bench-3 with `--concurrency` in flight. Each in-flight slot loops:
    POST /e/bench → event id; GET /v1/events/{id}/runs → run id; GET /v1/runs/{run_id}?wait=30s until the run
    ended. Throughput = completed runs / wall time of the phase.
(b) Sequential: `--sequential` runs of bench-1, one at a time, the same three calls.

Latency is measured on the client with a monotonic clock: "accepted → completed" starts when the answer to
POST /e/ arrives (the event is stored) and ends when the long-poll returns the Completed run; "sent →
completed" starts before the POST. As a cross-check, "server" is the run's `ended_at` minus the event's
`received_at` as the REST API reports them (1 ms resolution). Peak RSS is VmHWM of the server process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LONG_POLL = "30s"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workflow(fid: str, event: str, steps: list[str], step_url: str) -> dict[str, Any]:
    config: dict[str, Any] = {"id": fid, "triggers": [{"event": event}], "steps": {}}
    previous = None
    for sid in steps:
        step: dict[str, Any] = {"runtime": {"type": "http", "url": f"{step_url}/{sid}"}}
        if previous:
            step["after"] = [{"step": previous}]
        config["steps"][sid] = step
        previous = sid
    return config


# --- processes ----------------------------------------------------------------------------------------------

class Child:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 — open for the child's whole life, closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=ROOT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def proc_status(self, field_name: str) -> int | None:
        """A `kB` field of /proc/<pid>/status (VmHWM, VmRSS), in kB."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float:
        """utime + stime of the process (its own threads; children not included)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


async def wait_ready(session: aiohttp.ClientSession, url: str, child: Child, method: str = "GET",
                     timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise SystemExit(f"the {child.name} exited early:\n{child.output()}")
        try:
            async with session.request(method, url, json={"event": {}, "steps": {}, "ctx": {"attempt": 0}},
                                       timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status < 500:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout:g}s:\n{child.output()}")


# --- one run, as a client sees it ------------------------------------------------------------------------------

@dataclass
class Sample:
    event_id: str
    sent: float                  # monotonic, before POST /e/
    accepted: float              # monotonic, POST /e/ answered
    completed: float = 0.0       # monotonic, the long-poll returned the ended run
    status: str = ""
    run: dict[str, Any] = field(default_factory=dict)
    server_ms: float | None = None  # run ended_at - event received_at, from the REST API


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.s = session
        self.base = base

    async def get(self, path: str) -> Any:
        async with self.s.get(self.base + path) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path} answered {resp.status}: {body[:300]!r}")
            return json.loads(body)

    async def one_run(self, event_name: str, n: int) -> Sample:
        sent = time.monotonic()
        async with self.s.post(f"{self.base}/e/bench", data=json.dumps({"name": event_name, "data": {"n": n}}),
                               headers={"Content-Type": "application/json"}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST /e/bench answered {resp.status}: {body[:300]!r}")
        sample = Sample(event_id=json.loads(body)["ids"][0], sent=sent, accepted=time.monotonic())
        # The event API answers event ids only; the run id comes from the event's runs. stepflow creates the
        # runs in the same transaction as the event, so this is never empty — but be correct if it were.
        runs = (await self.get(f"/v1/events/{sample.event_id}/runs"))["data"]
        while not runs:
            await asyncio.sleep(0.002)
            runs = (await self.get(f"/v1/events/{sample.event_id}/runs"))["data"]
        run = runs[0]
        while run["status"] not in ("Completed", "Failed", "Cancelled"):
            run = (await self.get(f"/v1/runs/{run['run_id']}?wait={LONG_POLL}"))["data"]
        sample.completed = time.monotonic()
        sample.status = run["status"]
        sample.run = run
        return sample

    async def server_latency(self, sample: Sample) -> None:
        event = (await self.get(f"/v1/events/{sample.event_id}"))["data"]
        received = _parse_iso(event["received_at"])
        ended = _parse_iso(sample.run["ended_at"]) if sample.run.get("ended_at") else None
        if ended is not None:
            sample.server_ms = (ended - received) * 1000


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()  # Python 3.11 reads the trailing "Z"


# --- phases -----------------------------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    samples: list[Sample]
    wall: float
    cpu: dict[str, float]  # process name -> CPU seconds used during the phase


async def load_phase(api: Api, event_name: str, total: int, concurrency: int, procs: dict[str, Child]) -> Phase:
    counter = iter(range(total))
    samples: list[Sample] = []

    async def slot() -> None:
        for n in counter:
            samples.append(await api.one_run(event_name, n))

    cpu0 = _cpu(procs)
    started = time.monotonic()
    await asyncio.gather(*(slot() for _ in range(min(concurrency, total))))
    wall = time.monotonic() - started
    cpu = {k: v - cpu0[k] for k, v in _cpu(procs).items()}
    return Phase(f"{total} runs, {concurrency} in flight", samples, wall, cpu)


def _cpu(procs: dict[str, Child]) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    out = {name: child.cpu_seconds() for name, child in procs.items()}
    out["load client"] = own.ru_utime + own.ru_stime
    out["machine"] = _machine_busy()
    return out


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all CPUs, from /proc/stat; steal included)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- report -----------------------------------------------------------------------------------------------------

def report(title: str, phase: Phase, percentiles: tuple[int, ...]) -> list[str]:
    ok = [s for s in phase.samples if s.status == "Completed"]
    failed = len(phase.samples) - len(ok)
    lines = [(f"{title}: {len(ok)} completed, {failed} not completed, {phase.wall:.2f} s wall, "
              f"{len(ok) / phase.wall:.0f} runs/s")]
    head = f"  {'latency (ms)':<34}" + "".join(f"{'p' + str(p):>9}" for p in percentiles) + f"{'max':>9}"
    lines.append(head)
    series = [
        ("accepted -> completed (client)", [(s.completed - s.accepted) * 1000 for s in ok]),
        ("sent -> completed (client)", [(s.completed - s.sent) * 1000 for s in ok]),
        ("received_at -> ended_at (server)", [s.server_ms for s in ok if s.server_ms is not None]),
    ]
    for label, values in series:
        if values:
            lines.append(f"  {label:<34}" + "".join(f"{pct(values, p):>9.1f}" for p in percentiles)
                         + f"{max(values):>9.1f}")
    ours = {k: v for k, v in phase.cpu.items() if k != "machine"}
    cpu = ", ".join(f"{name} {secs:.2f} s ({secs / phase.wall * 100:.0f}%)" for name, secs in ours.items())
    others = max(0.0, phase.cpu.get("machine", 0.0) - sum(ours.values()))
    lines.append(f"  CPU during the phase: {cpu}; everything else on the machine "
                 f"{others:.2f} s ({others / phase.wall * 100:.0f}%)")
    return lines


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    step_port = args.step_port or free_port()
    api_port = args.port or free_port()
    step_url = f"http://127.0.0.1:{step_port}"
    (workdir / "bench-3.json").write_text(json.dumps(workflow("bench-3", "bench/three", ["a", "b", "c"], step_url)))
    (workdir / "bench-1.json").write_text(json.dumps(workflow("bench-1", "bench/one", ["a"], step_url)))

    db_path = Path(args.db_dir or workdir) / f"bench-{os.getpid()}.db"
    # No keys (keyless dev), default engine settings: clear STEPFLOW_* so the environment cannot change them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}
    script = Path(sys.executable).parent / "stepflow"
    stepflow_cmd = [str(script)] if script.exists() else [sys.executable, "-m", "stepflow.cli.main"]
    procs: dict[str, Child] = {}
    try:
        procs["step server"] = Child("step server", [sys.executable, str(HERE / "step_server.py"), "--port",
                                                     str(step_port)], workdir / "step_server.log", env)
        procs["stepflow"] = Child("stepflow server", stepflow_cmd + [
            "dev", "--port", str(api_port), "--db", str(db_path),
            "-f", str(workdir / "bench-3.json"), "-f", str(workdir / "bench-1.json")], workdir / "stepflow.log", env)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:
            await wait_ready(session, f"{step_url}/a", procs["step server"], method="POST")
            await wait_ready(session, f"http://127.0.0.1:{api_port}/health", procs["stepflow"])
            api = Api(session, f"http://127.0.0.1:{api_port}")

            if args.warmup:
                await load_phase(api, "bench/three", args.warmup, min(args.concurrency, args.warmup), procs)
            load = await load_phase(api, "bench/three", args.events, args.concurrency, procs)

            seq_samples: list[Sample] = []
            cpu0 = _cpu(procs)
            started = time.monotonic()
            for n in range(args.sequential):
                seq_samples.append(await api.one_run("bench/one", n))
            seq = Phase("sequential", seq_samples, time.monotonic() - started,
                        {k: v - cpu0[k] for k, v in _cpu(procs).items()})

            # server-side timestamps, read after the timed phases so they do not disturb them
            for sample in load.samples + seq.samples:
                await api.server_latency(sample)

        rss = procs["stepflow"].proc_status("VmHWM")
        step_rss = procs["step server"].proc_status("VmHWM")
        rss_now = procs["stepflow"].proc_status("VmRSS")
    finally:
        for child in procs.values():
            child.stop()

    load_avg = os.getloadavg()
    print()
    print(f"stepflow core benchmark — {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}, load average before/after "
          f"{args.load_before[0]:.2f}/{load_avg[0]:.2f}")
    print(f"store: SQLite (WAL) at {db_path}; steps: http to {step_url}; "
          f"{args.warmup} warm-up runs not counted")
    print()
    for line in report(f"(a) 3-step workflow a -> b -> c, {args.events} events, {args.concurrency} in flight",
                       load, (50, 95, 99)):
        print(line)
    print()
    for line in report(f"(b) 1-step workflow, {args.sequential} sequential runs", seq, (50, 95, 99)):
        print(line)
    print()
    print(f"stepflow server peak RSS (VmHWM): {rss / 1024:.1f} MiB (VmRSS at the end {rss_now / 1024:.1f} MiB); "
          f"step server peak RSS {step_rss / 1024:.1f} MiB" if rss and rss_now and step_rss else
          "peak RSS: unavailable (/proc not readable)")
    print()
    ok_load = sum(s.status == "Completed" for s in load.samples)
    ok_seq = sum(s.status == "Completed" for s in seq.samples)
    print("targets (issue 2, item 11; this 2-core machine):")
    print(f"  throughput >= 400 runs/s              measured {ok_load / load.wall:6.0f} runs/s   "
          f"(Restate 411, DBOS 98)")
    seq_p50 = pct([(s.completed - s.accepted) * 1000 for s in seq.samples], 50) if seq.samples else float("nan")
    print(f"  single-step p50 <= 4 ms               measured {seq_p50:6.1f} ms       (Restate 4.2)")
    bad = [s for s in load.samples + seq.samples if s.status != "Completed"]
    for s in bad[:5]:
        print(f"  not completed: event {s.event_id}: {s.status} {json.dumps(s.run.get('error'))}")
    return 0 if ok_load == len(load.samples) and ok_seq == len(seq.samples) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500, help="events (runs) in the load phase [500]")
    parser.add_argument("--concurrency", type=int, default=50, help="runs in flight in the load phase [50]")
    parser.add_argument("--sequential", type=int, default=200, help="sequential single-step runs [200]")
    parser.add_argument("--warmup", type=int, default=50, help="uncounted runs before measuring [50]")
    parser.add_argument("--port", type=int, default=0, help="stepflow's port [a free one]")
    parser.add_argument("--step-port", type=int, default=0, help="the step server's port [a free one]")
    parser.add_argument("--db-dir", default=None,
                        help="directory for the SQLite file [the temporary directory]; e.g. /dev/shm to take the "
                             "disk's fsync out of the measurement")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (db, logs)")
    args = parser.parse_args()
    args.load_before = os.getloadavg()
    if shutil.which("stepflow", path=str(Path(sys.executable).parent)) is None:
        print("note: no `stepflow` script beside this Python; using `python -m stepflow.cli.main`")

    workdir = Path(tempfile.mkdtemp(prefix="stepflow-bench-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(bench(args, workdir))
        return uvloop.run(bench(args, workdir))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if args.db_dir:
                for leftover in Path(args.db_dir).glob(f"bench-{os.getpid()}.db*"):
                    leftover.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
