"""stepflow as real OS processes: `stepflow dev`, for the tests that kill one (SIGKILL) and start it again on the
same database (tests/test_durability.py, tests/test_operations_restart.py); and an API process with worker
processes on one PostgreSQL schema (tests/test_pause_processes.py, tests/test_flow_processes.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest
from conftest import free_port

STEPFLOW = str(Path(sys.executable).parent / "stepflow")


class StepflowProcess:
    """`stepflow dev` in its own process, restartable on the same port and database (a SQLite file by default,
    or any store URL); `env` is added to the environment, without the runner's own STEPFLOW_* settings."""

    def __init__(self, tmp_path: Path, workflow_file: Path, *, db: str | None = None,
                 args: Sequence[str] = ("--backoff-base", "0.05", "-v"), env: Mapping[str, str] = {}) -> None:
        self.tmp_path = tmp_path
        self.workflow_file = workflow_file
        self.db = db or str(tmp_path / "s.db")
        self.args = list(args)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}, **env}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def log(self) -> str:
        return "".join((self.tmp_path / f"stepflow-{i}.log").read_text() for i in range(self.starts))

    def _new_log(self) -> BinaryIO:
        return (self.tmp_path / f"stepflow-{self.starts}.log").open("wb")

    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None
        with self._new_log() as log:
            self.proc = await asyncio.create_subprocess_exec(
                STEPFLOW, "dev", "--port", str(self.port), "--db", self.db, "-f", str(self.workflow_file),
                *self.args, stdout=log, stderr=asyncio.subprocess.STDOUT, env=self.env)
        self.starts += 1
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    pytest.fail(f"stepflow dev exited with {self.proc.returncode}:\n{self.log}")
                try:
                    async with http.get(f"{self.url}/v1/runs?limit=1") as resp:
                        if resp.status in (200, 401):  # up (401: it has a signing key)
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"stepflow dev did not start within 30 s:\n{self.log}")
                await asyncio.sleep(0.05)

    async def kill9(self) -> None:
        assert self.proc is not None and self.proc.returncode is None
        os.kill(self.proc.pid, signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# production-strength keys, as `stepflow serve` requires
SIGNING_KEY = "signkey-test-" + "3d" * 32
EVENT_KEY = "evt-" + "c4" * 16


@dataclass
class Cluster:
    """`stepflow serve --no-workers` and `stepflow worker` processes on one PostgreSQL schema."""

    url: str                 # the API process's base URL
    db: str                  # the store URL (with its schema)
    schema: str
    log: Path
    env: dict[str, str]
    http: aiohttp.ClientSession  # authorised with the signing key
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_worker(self, *args: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            proc = subprocess.Popen([STEPFLOW, "worker", "--db", self.db, *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.processes)

    async def send(self, events: list[dict[str, Any]]) -> list[str]:
        async with self.http.post(f"{self.url}/e/{EVENT_KEY}", json=events) as resp:
            assert resp.status == 200, await resp.text()
            return list((await resp.json())["ids"])


@asynccontextmanager
async def serve_and_workers(tmp_path: Path, functions: Path, workers: int, *worker_args: str,
                            env: Mapping[str, str] = {}) -> AsyncIterator[Cluster]:
    """An API process and `workers` worker processes on a fresh PostgreSQL schema, dropped at the end."""
    import asyncpg
    from conftest import POSTGRES_URL

    schema = f"procs_{os.getpid()}_{time.monotonic_ns()}"
    base_dsn = str(POSTGRES_URL).split("?")[0]
    db = f"{base_dsn}?schema={schema}"
    subprocess.run([STEPFLOW, "migrate", "--db", db], check=True, capture_output=True)
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}, **env}
    port = free_port()
    log = tmp_path / "processes.log"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SIGNING_KEY}"}) as http:
        cluster = Cluster(url=f"http://127.0.0.1:{port}", db=db, schema=schema, log=log, env=full_env, http=http)
        with log.open("ab") as out:
            cluster.processes.append(subprocess.Popen(
                [STEPFLOW, "serve", "--no-workers", "--db", db, "--port", str(port), "-f", str(functions),
                 "--signing-key", SIGNING_KEY, "--event-key", EVENT_KEY], env=full_env, stdout=out,
                stderr=subprocess.STDOUT))
        try:
            for _ in range(workers):
                cluster.add_worker(*worker_args)
            deadline = time.monotonic() + 30
            while True:
                assert cluster.alive(), log.read_text()
                try:
                    async with http.get(f"{cluster.url}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            yield cluster
        finally:
            for proc in cluster.processes:
                proc.terminate()
            for proc in cluster.processes:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            admin = await asyncpg.connect(base_dsn)
            try:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await admin.close()
