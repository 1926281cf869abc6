"""Testing functions in plain pytest: run them to completion on a temporary SQLite, with sleeps and waits
fast-forwarded, step results inspectable and events injectable.

    from stepflow.testing import run_function

    async def test_process_csv():
        result = await run_function(app, "process-csv-upload", data={"file": "x.csv"},
                                    events=[{"name": "imports/approved", "data": {"file": "x.csv"}}])
        assert result.status == "Completed"
        assert result.output["processedItems"] == 98
        assert result.steps["parse"].attempts == 1

Fast-forward: `ctx.step.sleep` / `sleep_until` end at once; `wait_for_event` resolves with a matching event
among those injected (sent when the run starts), or times out at once (returns None) if there is none.
Retries use a 1 ms backoff. Everything else — memoization, retries, errors, invoke, parallel steps — is the
real engine on a real (temporary) database.

Debugging a recorded run: `await replay(app, run_id, client=stepflow.Client(url))` runs the function's code here
against the run's history, step results from the record (stepflow/sdk/replayer.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepflow.definitions import FunctionDef
from stepflow.embedded import Engine
from stepflow.engine import EngineConfig
from stepflow.sdk.app import App
from stepflow.sdk.replayer import Divergence, ReplayResult, replay
from stepflow.store import SqliteStore

__all__ = ["Divergence", "ReplayResult", "StepResult", "TestEngine", "TestResult", "replay", "run_function",
           "testing_config"]


@dataclass(slots=True)
class StepResult:
    id: str
    status: str              # completed | failed | skipped | cancelled | scheduled | running
    output: Any
    error: dict[str, Any] | None
    attempts: int
    kind: str | None


@dataclass(slots=True)
class TestResult:
    run_id: str
    event_id: str
    status: str              # Completed | Failed | Cancelled
    output: Any
    error: dict[str, Any] | None
    steps: dict[str, StepResult] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TestResult({self.status}, output={self.output!r}, steps={list(self.steps)})"


def testing_config(**overrides: Any) -> EngineConfig:
    config = EngineConfig(backoff_base=0.001, backoff_max=0.01, poll_interval=0.05, fast_forward=True)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class TestEngine:
    """An embedded engine on a temporary database, for tests. Use as `async with TestEngine(app) as t:`."""

    __test__ = False  # not a pytest test class

    def __init__(self, *apps: App, functions: list[FunctionDef] | None = None, **config: Any) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="stepflow-test-")
        store = SqliteStore(Path(self._tmp.name) / "test.db")
        self.engine = Engine(*apps, store=store, config=testing_config(**config), functions=functions)

    async def __aenter__(self) -> TestEngine:
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()
        self._tmp.cleanup()

    async def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """Inject events (they trigger functions and resolve waits like any other)."""
        return await self.engine.send(events)

    async def run(self, function_id: str, *, data: dict[str, Any] | None = None,
                  event: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None,
                  timeout: float = 30.0) -> TestResult:
        """Start `function_id` (whatever its triggers) and wait for its run to end."""
        trigger = event or {"name": "stepflow/test.run", "data": data or {}}
        event_id, run_id = await self.engine.core.invoke(function_id, trigger)
        if events:
            await self.engine.send(events)
        run = await self.engine.wait_for_run(run_id, timeout)
        steps = {s["step_id"]: StepResult(id=s["step_id"], status=s["status"], output=s["output"],
                                          error=s["error"], attempts=s["attempts"], kind=s.get("kind"))
                 for s in await self.engine.get_run_steps(run_id)}
        return TestResult(run_id=run_id, event_id=event_id, status=run["status"], output=run["output"],
                          error=run.get("error"), steps=steps)


async def run_function(app: App, function_id: str, *, data: dict[str, Any] | None = None,
                       event: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None,
                       timeout: float = 30.0, **config: Any) -> TestResult:
    """Run one function to completion on a fresh temporary engine (see the module docstring)."""
    async with TestEngine(app, **config) as engine:
        return await engine.run(function_id, data=data, event=event, events=events, timeout=timeout)
