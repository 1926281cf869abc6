"""Helpers shared by the SDK tests (tests/test_sdk_*.py). It holds no tests.

Everything is real: an embedded `stepflow.Engine` on a SQLite file under the test's tmp_path, with fast
retries, and helpers to count how often step callables run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conftest import make_store

import stepflow
from stepflow import EngineConfig

FAST = {"backoff_base": 0.01, "backoff_max": 0.1, "poll_interval": 0.2}


@asynccontextmanager
async def embedded(tmp_path: Path, *apps: stepflow.App, db: str = "embedded.db",
                   **config: Any) -> AsyncIterator[stepflow.Engine]:
    """An embedded engine for `apps` on a real SQLite file, retries backing off 10 ms → 100 ms."""
    store = await make_store(tmp_path, db.removesuffix(".db"))  # SQLite, or PostgreSQL with STEPFLOW_TEST_BACKEND
    engine = stepflow.Engine(*apps, store=store, config=EngineConfig(**{**FAST, **config}))
    async with engine:
        yield engine


async def first_run(engine: Any, event_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The run the event started, once it has ended (engine: embedded Engine or Client)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await engine.get_event_runs(event_id)
        if runs:
            break
        assert time.monotonic() < deadline, f"event {event_id} started no run"
        await asyncio.sleep(0.01)
    assert len(runs) == 1, runs
    return await wait_ended(engine, runs[0]["run_id"], timeout=max(0.1, deadline - time.monotonic()))


async def wait_ended(engine: Any, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = await engine.get_run(run_id)
        if run["status"] in ("Completed", "Failed", "Cancelled"):
            return dict(run)
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {timeout}s"
        await asyncio.sleep(0.02)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.02)


class Calls(Counter[str]):
    """How often each step callable ran: `calls.hit("a")` in the callable, `calls["a"]` in the test."""

    def hit(self, name: str) -> int:
        self[name] += 1
        return self[name]
