"""Scale-out benchmark: a 3-step workflow on PostgreSQL with 1, 2 and 4 `stepflow worker` processes behind one
API process, next to SQLite embedded (`stepflow dev`, one process), in one run, printed side by side.

    .venv/bin/python bench/bench_scaleout.py [--events 1000] [--concurrency 50] [--workers 1,2,4]
                                             [--db postgresql://postgres@127.0.0.1:5432/test]

Configurations, one after the other, each on a fresh store:
  - sqlite: `stepflow dev --db <temporary file>` — API and engine in one process, embedded SQLite (WAL);
  - postgres, W workers (W from --workers): a fresh schema (`?schema=bench_<pid>_w<W>`), migrated with
    `stepflow migrate`; one API process `stepflow serve --no-workers` and W `stepflow worker` processes
    (default settings: pool_size 10, concurrency 100); the schema is dropped afterwards.
Every stepflow process gets the same workflow file and the same keys (`--signing-key`, `--event-key`), so
the API does the same authentication work in every configuration.

The steps are in-process handlers (bench/scaleout_steps.py:step, on the PYTHONPATH of every stepflow
process): async, no I/O, answering at once with a small body. Why not HTTP steps behind a step server: on a
2-core machine that server would take a share of the CPU the workers need and would be one process shared by
every configuration — so adding workers would measure how the step server copes as much as how the engine
scales. In-process steps run inside whichever worker claimed the job, so the work to spread is the engine's
own (claim, execute, settle, plan the next step), which is what scale-out is about. bench_core.py measures
the HTTP-step path.

Load (this process, aiohttp on uvloop): `--warmup` uncounted runs, then `--events` events with
`--concurrency` in flight. Each in-flight slot loops: POST /e/<event key> (one event) → event id;
GET /v1/events/{id}/runs?wait=30s, which returns once all of the event's runs have ended (repeated if the wait
ran out). Latency = accepted → completed: from the answer to the POST (event and run stored) to the answer
of the long poll with the run Completed, on this process's monotonic clock. Throughput = completed runs /
wall time of the phase.

Measured during the load phase (deltas between its start and end):
  - CPU seconds (utime + stime, /proc/<pid>/stat) of the API process and of the workers (for sqlite: the one
    `stepflow dev` process), of PostgreSQL (the client backends of this configuration — found by the
    application_name the URL gives them — plus the postmaster and the background processes: walwriter,
    checkpointer, …), of this load client, and of everything else on the machine (/proc/stat busy time minus
    the above; non-zero means other work competed for the cores);
  - context switches of the stepflow processes (all threads, /proc/<pid>/task/*/status) and of the machine
    (/proc/stat ctxt);
  - PostgreSQL: committed transactions of the database (pg_stat_database) and WAL records, bytes and fsyncs
    (pg_stat_wal) — cluster-wide counters, so other users of the cluster would show up in them too — and the
    connections the configuration has open at the end (its pools and LISTEN connections).
A configuration during which other work used more than 10 % of a core is marked `*` (disturbed).

A PostgreSQL configuration may open (workers + 1) × (pool_size + 1) connections: 55 for 4 workers at the
default pool_size; the script warns when the server has fewer free. SIGINT/SIGTERM stop the processes it
started and drop its schemas. Results and their reading: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_core import Child, free_port, pct

CLK_TCK = os.sysconf("SC_CLK_TCK")
SIGNING_KEY = "signkey-bench-" + "7e" * 32  # as strong as `stepflow serve` requires
EVENT_KEY = "bench-event-key-" + "3c" * 8
EVENT = "bench/scaleout"
LONG_POLL = "30s"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DISTURBED = 0.10  # "other" CPU above this share of one core marks a configuration as disturbed


def workflow_file(path: Path) -> Path:
    steps: dict[str, Any] = {}
    previous = None
    for sid in ("a", "b", "c"):
        step: dict[str, Any] = {"runtime": {"type": "inprocess", "handler": "scaleout_steps:step"}}
        if previous:
            step["after"] = [{"step": previous}]
        steps[sid] = step
        previous = sid
    path.write_text(json.dumps({"id": "bench-scaleout-3", "triggers": [{"event": EVENT}], "steps": steps}))
    return path


# --- /proc --------------------------------------------------------------------------------------------------

def pid_cpu(pid: int) -> float:
    """utime + stime of a process, seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def pid_ctxt(pid: int) -> int:
    """Voluntary + involuntary context switches of all threads of a process."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def all_processes() -> dict[int, tuple[str, float]]:
    """Every live process: pid -> (name, utime + stime in seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        try:
            out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
        except (IndexError, ValueError):
            continue
    return out


def machine() -> tuple[float, int]:
    """(busy CPU seconds of the whole machine, context switches since boot), from /proc/stat."""
    busy, ctxt = 0.0, 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            values = [int(x) for x in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            busy = (sum(values[:8]) - idle) / CLK_TCK
        elif line.startswith("ctxt "):
            ctxt = int(line.split()[1])
    return busy, ctxt


def self_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


# --- PostgreSQL observation -------------------------------------------------------------------------------------

class PgObserver:
    """An admin connection (application_name `stepflow-bench-admin`) that finds the backends of one
    configuration and reads the cluster's counters."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Any = None
        self.postmaster: int | None = None

    async def open(self) -> None:
        import asyncpg

        self.conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "stepflow-bench-admin"})
        backend = int(await self.conn.fetchval("SELECT pg_backend_pid()"))
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        self.postmaster = int(fields[1])  # the backend's parent

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def pids(self, application_name: str) -> list[int]:
        rows = await self.conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name=$1 "
                                     "OR backend_type <> 'client backend'", application_name)
        return [int(r["pid"]) for r in rows] + ([self.postmaster] if self.postmaster else [])

    async def check_room(self, processes: int, pool_size: int) -> None:
        """Warn when the server may not have the connections a configuration can open (pools + LISTEN)."""
        row = await self.conn.fetchrow(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
            " - (SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type='client backend') AS free")
        needed = processes * (pool_size + 1)
        if row["free"] < needed:
            print(f"warning: PostgreSQL has {row['free']} free connections; {processes} stepflow processes may open "
                  f"up to {needed} (lower --pool-size, or wait until other clients are done)", file=sys.stderr)

    async def connections(self, application_name: str) -> int:
        return int(await self.conn.fetchval("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name=$1",
                                            application_name))

    async def counters(self) -> dict[str, float]:
        db = await self.conn.fetchrow("SELECT xact_commit, xact_rollback FROM pg_stat_database "
                                      "WHERE datname=current_database()")
        wal = await self.conn.fetchrow("SELECT wal_records, wal_bytes, wal_sync, wal_write FROM pg_stat_wal")
        out = {"xact_commit": float(db["xact_commit"]), "xact_rollback": float(db["xact_rollback"])}
        if wal is not None:
            out.update({k: float(wal[k]) for k in ("wal_records", "wal_bytes", "wal_sync", "wal_write")})
        return out

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sql)


# --- one configuration ------------------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)   # accepted -> completed, seconds
    sent_latencies: list[float] = field(default_factory=list)
    not_completed: list[str] = field(default_factory=list)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)     # name -> CPU seconds during the load phase
    ctxt_stepflow: int = 0
    ctxt_machine: int = 0
    pg: dict[str, float] = field(default_factory=dict)      # counter deltas
    processes: int = 0
    others: dict[str, float] = field(default_factory=dict)  # other processes' CPU seconds, by name
    connections: int = 0                                    # PostgreSQL connections of the configuration

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.completed / self.wall if self.wall else 0.0


class Load:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.s = session
        self.base = base

    async def one(self, n: int) -> tuple[float, float, str]:
        """(sent → completed, accepted → completed, final status)."""
        sent = time.monotonic()
        async with self.s.post(f"{self.base}/e/{EVENT_KEY}", data=json.dumps({"name": EVENT, "data": {"n": n}}),
                               headers={"Content-Type": "application/json"}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST /e/ answered {resp.status}: {body[:300]!r}")
        accepted = time.monotonic()
        event_id = json.loads(body)["ids"][0]
        while True:
            async with self.s.get(f"{self.base}/v1/events/{event_id}/runs?wait={LONG_POLL}") as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET /v1/events/{event_id}/runs answered {resp.status}: {body[:300]!r}")
            runs = json.loads(body)["data"]
            if runs and all(r["status"] in ("Completed", "Failed", "Cancelled") for r in runs):
                break
        done = time.monotonic()
        status = "Completed" if all(r["status"] == "Completed" for r in runs) else runs[0]["status"]
        return done - sent, done - accepted, status

    async def phase(self, total: int, concurrency: int, result: Result | None) -> None:
        counter = iter(range(total))

        async def slot() -> None:
            for n in counter:
                sent_lat, lat, status = await self.one(n)
                if result is None:
                    continue
                if status == "Completed":
                    result.latencies.append(lat)
                    result.sent_latencies.append(sent_lat)
                else:
                    result.not_completed.append(status)

        await asyncio.gather(*(slot() for _ in range(min(concurrency, total))))


async def wait_health(session: aiohttp.ClientSession, base: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise SystemExit(f"the {child.name} exited early:\n{child.output()}")
        try:
            async with session.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{base}/health did not answer within {timeout:g}s:\n{child.output()}")


async def wait_output(child: Child, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in child.output():
        if not child.alive():
            raise SystemExit(f"the {child.name} exited early:\n{child.output()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the {child.name} did not start within {timeout:g}s:\n{child.output()}")
        await asyncio.sleep(0.05)


async def measure(name: str, base: str, children: dict[str, Child], args: argparse.Namespace,
                  pg: PgObserver | None, application_name: str) -> Result:
    """Warm up, then the timed load phase with its CPU, context-switch and PostgreSQL counters."""
    result = Result(name, processes=len(children))
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {SIGNING_KEY}"},
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        load = Load(session, base)
        if args.warmup:
            await load.phase(args.warmup, args.concurrency, None)
        await asyncio.sleep(0.5)  # let the warm-up's stragglers (stats, checkpoints of SQLite) settle

        pg_pids = await pg.pids(application_name) if pg else []
        pg_cpu0 = {pid: pid_cpu(pid) for pid in pg_pids}
        counters0 = await pg.counters() if pg else {}
        own_cpu0 = {k: pid_cpu(c.proc.pid) for k, c in children.items()}
        own_ctxt0 = sum(pid_ctxt(c.proc.pid) for c in children.values())
        client0 = self_cpu()
        everyone0 = all_processes()
        busy0, ctxt0 = machine()
        started = time.monotonic()
        await load.phase(args.events, args.concurrency, result)
        result.wall = time.monotonic() - started
        busy1, ctxt1 = machine()
        everyone1 = all_processes()
        client1 = self_cpu()
        own_ctxt1 = sum(pid_ctxt(c.proc.pid) for c in children.values())
        own_cpu1 = {k: pid_cpu(c.proc.pid) for k, c in children.items()}
        if pg:
            pg_pids_after = await pg.pids(application_name)
            result.connections = await pg.connections(application_name)
            pg_cpu = sum(pid_cpu(pid) - pg_cpu0.get(pid, 0.0) for pid in set(pg_pids) | set(pg_pids_after))
            await asyncio.sleep(1.1)  # PostgreSQL publishes its statistics at most once a second
            counters1 = await pg.counters()
            result.pg = {k: counters1[k] - counters0[k] for k in counters1}
            result.cpu["postgres"] = pg_cpu
    stepflow_cpu = {k: own_cpu1[k] - own_cpu0[k] for k in children}
    result.cpu.update(stepflow_cpu)
    result.cpu["load client"] = client1 - client0
    # everything else: other live processes (by name), and the rest (processes that exited during the phase,
    # interrupts)
    ours = {c.proc.pid for c in children.values()} | set(pg_pids) | {os.getpid()}
    if pg:
        ours |= set(pg_pids_after)
    others: dict[str, float] = {}
    for pid, (pname, cpu1) in everyone1.items():
        if pid in ours:
            continue
        before = everyone0.get(pid)
        delta = cpu1 - (before[1] if before else 0.0)  # by pid: kernel workers rename themselves as they work
        if delta > 0:
            others[pname] = others.get(pname, 0.0) + delta
    result.others = dict(sorted(others.items(), key=lambda kv: -kv[1]))
    result.cpu["other"] = max(0.0, (busy1 - busy0) - sum(result.cpu.values()))
    result.ctxt_stepflow = own_ctxt1 - own_ctxt0
    result.ctxt_machine = ctxt1 - ctxt0
    return result


def stepflow_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # default engine settings: clear STEPFLOW_* so the caller's environment cannot change them
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def stepflow_cmd() -> list[str]:
    script = Path(sys.executable).parent / "stepflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stepflow.cli.main"]


def stop_all(children: dict[str, Child]) -> None:
    for child in children.values():  # SIGTERM to all first: they shut down in parallel
        if child.alive():
            child.proc.send_signal(signal.SIGTERM)
    for child in children.values():
        child.stop()


async def run_sqlite(args: argparse.Namespace, workdir: Path, wf: Path) -> Result:
    port = free_port()
    db = Path(args.db_dir or workdir) / f"bench-scaleout-{os.getpid()}.db"
    children = {"stepflow dev": Child("stepflow dev", stepflow_cmd() + [
        "dev", "--port", str(port), "--db", str(db), "-f", str(wf),
        "--signing-key", SIGNING_KEY, "--event-key", EVENT_KEY], workdir / "sqlite-dev.log", stepflow_env())}
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await wait_health(session, base, children["stepflow dev"])
        return await measure("SQLite, stepflow dev (1 process)", base, children, args, None, "")
    finally:
        stop_all(children)
        for leftover in db.parent.glob(db.name + "*"):
            leftover.unlink(missing_ok=True)


async def run_postgres(args: argparse.Namespace, workdir: Path, wf: Path, workers: int, pg: PgObserver) -> Result:
    schema = f"bench_{os.getpid()}_w{workers}"
    application_name = f"stepflow-bench-{schema}"
    params = f"schema={schema}&application_name={application_name}"
    if args.pool_size:
        params += f"&pool_size={args.pool_size}"
    url = f"{args.db}{'&' if '?' in args.db else '?'}{params}"
    env = stepflow_env()
    await pg.check_room(workers + 1, args.pool_size or 10)
    migrate = await asyncio.create_subprocess_exec(*stepflow_cmd(), "migrate", "--db", url, env=env,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await migrate.communicate()
    if migrate.returncode != 0:
        raise SystemExit(f"stepflow migrate failed:\n{output.decode(errors='replace')}")
    port = free_port()
    children: dict[str, Child] = {}
    try:
        children["api"] = Child("API server", stepflow_cmd() + [
            "serve", "--no-workers", "--port", str(port), "--db", url, "-f", str(wf),
            "--signing-key", SIGNING_KEY, "--event-key", EVENT_KEY], workdir / f"pg{workers}-api.log", env)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await wait_health(session, base, children["api"])  # the function is registered before it listens
        worker_cmd = stepflow_cmd() + ["worker", "--db", url]
        if args.worker_concurrency:
            worker_cmd += ["--concurrency", str(args.worker_concurrency)]
        for i in range(workers):
            children[f"worker {i + 1}"] = Child(f"worker {i + 1}", worker_cmd, workdir / f"pg{workers}-w{i + 1}.log",
                                                env)
        for i in range(workers):
            await wait_output(children[f"worker {i + 1}"], "stepflow worker ")
        label = f"PostgreSQL, API + {workers} worker{'s' if workers > 1 else ''}"
        return await measure(label, base, children, args, pg, application_name)
    finally:
        stop_all(children)
        if not args.keep:
            await pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- report -------------------------------------------------------------------------------------------------------

def report(results: list[Result], args: argparse.Namespace, load_before: float, header: str) -> None:
    cores = os.cpu_count() or 1
    print()
    print(header)
    print(f"{args.events} runs of a 3-step workflow (in-process steps a -> b -> c), {args.concurrency} in flight, "
          f"{args.warmup} warm-up runs not counted; latency = event accepted -> run Completed (client)")
    print(f"load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f}")
    print()
    head = (f"{'configuration':<36}{'runs/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'stepflow CPU':>14}{'PG CPU':>9}{'client':>8}{'other':>8}{'busy':>7}"
            f"{'CPU ms/run':>12}{'ctxsw/run':>11}")
    print(head)
    print("-" * len(head))
    for r in results:
        stepflow = sum(v for k, v in r.cpu.items() if k not in ("postgres", "load client", "other"))
        pgcpu = r.cpu.get("postgres", 0.0)
        busy = sum(r.cpu.values()) / r.wall / cores * 100 if r.wall else 0.0
        if r.latencies:
            lat = [x * 1000 for x in r.latencies]
            figures = f"{r.rate:>8.0f}{pct(lat, 50):>9.1f}{pct(lat, 99):>9.1f}{max(lat):>9.1f}"
        else:
            figures = f"{0:>8}{'-':>9}{'-':>9}{'-':>9}"
        per_run = (stepflow + pgcpu) / r.completed * 1000 if r.completed else 0.0
        disturbed = " *" if r.wall and r.cpu["other"] / r.wall > DISTURBED else ""
        print(f"{r.name:<36}{figures}{stepflow:>12.2f} s{pgcpu:>7.2f} s{r.cpu['load client']:>6.2f} s"
              f"{r.cpu['other']:>6.2f} s{busy:>6.0f}%{per_run:>12.2f}"
              f"{(r.ctxt_machine / r.completed if r.completed else 0):>11.0f}{disturbed}")
    print()
    if any(r.wall and r.cpu["other"] / r.wall > DISTURBED for r in results):
        print(f"* disturbed: other work on the machine used more than {DISTURBED:.0%} of a core during the phase")
    print("stepflow CPU = API + workers (sqlite: the one process); PG CPU = this configuration's PostgreSQL backends "
          "+ postmaster + background processes; busy = all of the above, client and other, as a share of "
          f"{cores} cores; CPU ms/run = (stepflow + PG CPU) / completed runs; ctxsw/run = the machine's context "
          "switches / completed runs.")
    print()
    for r in results:
        lines = [f"{r.name}: {r.completed} completed, {len(r.not_completed)} not completed, {r.wall:.2f} s wall"]
        if r.latencies:
            lat = [x * 1000 for x in r.latencies]
            sent = [x * 1000 for x in r.sent_latencies]
            lines.append(f"  accepted -> completed ms: p50 {pct(lat, 50):.1f}  p95 {pct(lat, 95):.1f}  "
                         f"p99 {pct(lat, 99):.1f}  max {max(lat):.1f};  sent -> completed: p50 {pct(sent, 50):.1f}  "
                         f"p99 {pct(sent, 99):.1f}")
        procs = ", ".join(f"{k} {v:.2f} s ({v / r.wall * 100:.0f}%)" for k, v in r.cpu.items() if r.wall)
        lines.append(f"  CPU during the phase (% of one core): {procs}")
        if r.cpu.get("other", 0.0) >= 0.01:
            named = sum(r.others.values())
            top = ", ".join(f"{k} {v:.2f} s" for k, v in list(r.others.items())[:4])
            lines.append(f"  other: {min(named, r.cpu['other']):.2f} s in other processes ({top or '-'}), "
                         f"{max(0.0, r.cpu['other'] - named):.2f} s elsewhere (processes that exited meanwhile, "
                         "interrupts)")
        per_run = max(1, r.completed)
        lines.append(f"  context switches: stepflow processes {r.ctxt_stepflow} ({r.ctxt_stepflow / per_run:.1f}"
                     f"/run), machine {r.ctxt_machine} ({r.ctxt_machine / per_run:.1f}/run)")
        if r.pg and r.completed:
            n = r.completed
            lines.append(f"  PostgreSQL (cluster-wide): {r.pg['xact_commit'] / n:.1f} commits/run, "
                         f"{r.pg['xact_rollback'] / n:.2f} rollbacks/run, "
                         f"{r.pg.get('wal_records', 0) / n:.0f} WAL records/run, "
                         f"{r.pg.get('wal_bytes', 0) / n / 1024:.1f} KiB WAL/run, "
                         f"{r.pg.get('wal_sync', 0) / n:.2f} WAL fsyncs/run "
                         f"({r.pg.get('wal_sync', 0) / r.wall:.0f}/s); {r.connections} connections open at the "
                         f"end of the phase (pools + LISTEN)")
        for status in sorted(set(r.not_completed))[:5]:
            lines.append(f"  not completed: {r.not_completed.count(status)} run(s) {status}")
        print("\n".join(lines))


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    wf = workflow_file(workdir / "bench-scaleout-3.json")
    pg = PgObserver(args.db.split("?")[0])
    results: list[Result] = []
    await pg.open()
    pg_version = await pg.conn.fetchval("SHOW server_version")
    sync_commit = await pg.conn.fetchval("SHOW synchronous_commit")
    max_conn = await pg.conn.fetchval("SHOW max_connections")
    try:
        for round_no in range(args.rounds):
            if not args.no_sqlite:
                results.append(await run_sqlite(args, workdir, wf))
            for workers in args.workers:
                results.append(await run_postgres(args, workdir, wf, workers, pg))
            if args.rounds > 1:
                print(f"round {round_no + 1} of {args.rounds} done", file=sys.stderr)
    finally:
        await pg.close()
    header = (f"stepflow scale-out benchmark — {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{platform.system()} {platform.release()}; PostgreSQL {pg_version} on this machine "
              f"(synchronous_commit={sync_commit}, max_connections={max_conn}); worker pool_size "
              f"{args.pool_size or 'default (10)'}, worker concurrency {args.worker_concurrency or 'default (100)'}")
    report(results, args, args.load_before, header)
    return 0 if all(not r.not_completed for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events (runs) per configuration [1000]")
    parser.add_argument("--concurrency", type=int, default=50, help="runs in flight [50]")
    parser.add_argument("--warmup", type=int, default=100, help="uncounted runs before measuring [100]")
    parser.add_argument("--workers", default="1,2,4", help="worker-process counts on PostgreSQL [1,2,4]")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite configuration")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all configurations this many times [1]")
    parser.add_argument("--db", default=os.environ.get("STEPFLOW_TEST_POSTGRES_URL") or DEFAULT_PG,
                        help=f"PostgreSQL URL (a fresh schema is made per configuration) [{DEFAULT_PG}]")
    parser.add_argument("--pool-size", type=int, default=0, help="pool_size of every stepflow process [default 10]")
    parser.add_argument("--worker-concurrency", type=int, default=0, help="--concurrency of each worker [100]")
    parser.add_argument("--db-dir", default=None, help="directory for the SQLite file [a temporary directory]")
    parser.add_argument("--keep", action="store_true", help="keep the logs and the PostgreSQL schemas")
    args = parser.parse_args()
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    args.load_before = os.getloadavg()[0]

    workdir = Path(tempfile.mkdtemp(prefix="stepflow-bench-scaleout-"))

    async def interruptible() -> int:
        # SIGTERM/SIGINT cancel the benchmark, so that its `finally` blocks stop the processes it started and
        # drop the schemas it made
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await bench(args, workdir)
        except asyncio.CancelledError:
            print("interrupted", file=sys.stderr)
            return 130

    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(interruptible())
        return uvloop.run(interruptible())
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
