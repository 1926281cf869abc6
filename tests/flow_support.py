"""Helpers for the flow-control tests: engines sharing one database — two on a PostgreSQL schema in the
PostgreSQL pass, as two processes would; one on a SQLite file, which belongs to one process — and a step server
that records, per key, how many calls run at once and when each started."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import BACKEND, StepServer, make_store

from stepflow.definitions import parse_function
from stepflow.engine import EngineConfig, EngineCore
from stepflow.store.records import RunRecord


@dataclass
class Recorder:
    """A step handler that takes `hold` seconds and records concurrency per key (`event.data.key`)."""

    hold: float = 0.1
    running: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total_running: int = 0
    most_total: int = 0
    started: list[tuple[float, str, Any]] = field(default_factory=list)  # (monotonic time, key, event data)
    spans: list[tuple[float, float, str, str, int]] = field(default_factory=list)  # (start, end, key, run, attempt)

    async def __call__(self, payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        data = payload["event"]["data"]
        key = str(data.get("key", ""))
        self.started.append((time.monotonic(), key, data))
        self.running[key] += 1
        self.total_running += 1
        self.most[key] = max(self.most[key], self.running[key])
        self.most_total = max(self.most_total, self.total_running)
        began = time.monotonic()
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.running[key] -= 1
            self.total_running -= 1
            ctx = payload.get("ctx") or {}
            self.spans.append((began, time.monotonic(), key, str(ctx.get("run_id")), int(ctx.get("attempt") or 0)))
        return web.json_response({"n": data.get("n")})


@asynccontextmanager
async def engines(tmp_path: Path, **config: Any) -> AsyncIterator[list[EngineCore]]:
    """Engines on one database, as separate processes share it (each its own connections): two on PostgreSQL,
    one on SQLite (a file serves one process)."""
    started: list[EngineCore] = []
    try:
        for _ in range(2 if BACKEND == "postgres" else 1):
            store = await make_store(tmp_path, "shared")
            engine = EngineCore(store, EngineConfig(**{"backoff_base": 0.01, "backoff_max": 0.2,
                                                       "poll_interval": 0.2, **config}))
            await engine.start()
            started.append(engine)
        yield started
    finally:
        for engine in reversed(started):
            await engine.stop()


async def register(engines: list[EngineCore], config: dict[str, Any]) -> None:
    fn = parse_function(config, source="test")
    for engine in engines:
        await engine.register(fn)


def one_step(step_server: StepServer, recorder: Recorder, path: str = "/work", **extra: Any) -> dict[str, Any]:
    return {"triggers": [{"event": "flow/go"}],
            "steps": {"work": {"runtime": {"type": "http", "url": step_server.route(path, recorder)}}}, **extra}


async def send(engine: EngineCore, *data: dict[str, Any], name: str = "flow/go") -> list[str]:
    return await engine.send([{"name": name, "data": d} for d in data])


async def runs_of(engine: EngineCore, event_ids: list[str]) -> list[RunRecord]:
    runs: list[RunRecord] = []
    for event_id in event_ids:
        runs += await engine.store.get_event_runs(event_id)
    return runs


async def all_ended(engine: EngineCore, event_ids: list[str], expected: int, timeout: float = 60) -> list[RunRecord]:
    deadline = time.monotonic() + timeout
    while True:
        runs = await runs_of(engine, event_ids)
        if len(runs) == expected and all(r.status.is_terminal for r in runs):
            return runs
        assert time.monotonic() < deadline, f"{sum(r.status.is_terminal for r in runs)}/{expected} runs ended"
        await asyncio.sleep(0.05)
