"""`stepflow dev` as a real OS process, for the tests that kill one (SIGKILL) and start it again on the same
database: durability (tests/test_durability.py) and bulk operations (tests/test_operations_restart.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

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
                        if resp.status == 200:
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
