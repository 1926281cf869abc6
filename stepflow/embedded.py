"""Running SDK apps and workflow functions embedded: the engine and the functions in one process, no server.

    async with stepflow.Engine(app, store="sqlite:///stepflow.db") as engine:
        ids = await engine.send({"name": "imports/csv.uploaded", "data": {...}})
        output = await engine.wait_for_output(ids[0], timeout=60)

    async with stepflow.Engine(SqliteStore("embed.db")) as engine:    # a Store positionally works too
        await engine.register(stepflow.workflow(...))

The same durability as the server: runs, steps and timers live in the store, and a restarted process picks
up where the previous one stopped. `stepflow.server.create_app(engine, settings)` serves the event and REST
APIs of an embedded engine. This module is the glue between the SDK and the engine; neither imports the
other (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, TypeGuard

from stepflow.definitions import FunctionDef, parse_function
from stepflow.engine import EngineConfig, EngineCore
from stepflow.engine.run_search import RunFilter, list_runs
from stepflow.errors import InvalidArgumentError, NotFoundError, RunFailedError, WaitTimeoutError
from stepflow.ids import is_ulid, now_ms
from stepflow.runtimes import default_runtimes
from stepflow.runtimes.inprocess import InProcessRuntime
from stepflow.sdk.app import App
from stepflow.server.serialize import event_v1, run_v1, step_v1
from stepflow.store import store_from_url
from stepflow.store.base import Store
from stepflow.store.records import RunStatus


def _is_store(item: object) -> TypeGuard[Store]:
    # `Store` is a typing.Protocol (not runtime-checkable): recognise one by the calls the engine makes first
    names = ("open", "close", "ingest_events", "claim_jobs")
    return all(callable(getattr(item, name, None)) for name in names)


def inprocess_runtime_for(app: App, function_id: str) -> dict[str, Any]:
    return {"type": "inprocess", "handler": f"{app.id}:{function_id}"}


def _sdk_handler(app: App, function_id: str) -> Any:
    async def handle(document: dict[str, Any]) -> Any:
        return await app.call(function_id, document)

    return handle


class Engine:
    """An embedded engine for SDK apps and workflow functions, with the client's calls.

    Positional arguments are SDK `App`s, workflow functions (`FunctionDef`, from `stepflow.workflow`) and at
    most one `Store`; `store=` takes a store or a URL instead (default: SQLite `.stepflow/stepflow.db`).
    The client's calls (`get_run`, `wait_for_run`, …) answer the REST API's v1 dicts.
    """

    def __init__(self, *items: App | FunctionDef | Store, store: str | Store | None = None,
                 config: EngineConfig | None = None, functions: list[FunctionDef] | None = None,
                 environment_id: str = "embedded") -> None:
        apps: list[App] = []
        defs: list[FunctionDef] = list(functions or [])
        given: list[Store] = []
        for item in items:
            if isinstance(item, App):
                apps.append(item)
            elif isinstance(item, FunctionDef):
                defs.append(item)
            elif _is_store(item):
                given.append(item)
            else:
                raise InvalidArgumentError(f"stepflow.Engine() takes SDK apps (stepflow.App), workflow functions "
                                f"(stepflow.workflow(...)) and one store (e.g. SqliteStore(path)); got "
                                f"{type(item).__name__}: {item!r}")
        if len(given) > 1 or (given and store is not None):
            raise InvalidArgumentError("stepflow.Engine() takes one store: give it positionally or as store=, not both")
        chosen: str | Store | None = given[0] if given else store
        self.apps = apps
        self._store = store_from_url(chosen) if isinstance(chosen, str) or chosen is None else chosen
        self._inprocess = InProcessRuntime()
        runtimes = [self._inprocess, *(r for r in default_runtimes() if r.type != "inprocess")]
        self.core = EngineCore(self._store, config or EngineConfig(), runtimes=runtimes)
        self._functions = defs
        self._environment_id = environment_id
        self._started = False

    @property
    def store(self) -> Store:
        return self._store

    async def start(self) -> None:
        if self._started:
            return
        await self.core.start()
        for app in self.apps:
            await self.add_app(app)
        for fn in self._functions:
            await self.core.register(fn)
        self._started = True

    async def register(self, fn: FunctionDef) -> int | None:
        """Register a workflow function (`stepflow.workflow(...)`, `parse_function`, a loaded file). On a
        started engine it is stored at once and its version returned (a changed definition is a new version);
        before `start()` it is registered at start, and None is returned."""
        if not isinstance(fn, FunctionDef):
            raise InvalidArgumentError(f"register() takes a workflow function (stepflow.workflow(...)), got "
                            f"{type(fn).__name__}; SDK apps go to stepflow.Engine(app) or add_app(app)")
        if not self._started:
            self._functions.append(fn)
            return None
        return await self.core.register(fn)

    async def add_app(self, app: App) -> None:
        for spec in app.functions.values():
            self._inprocess.register(f"{app.id}:{spec.id}", _sdk_handler(app, spec.id))
            await self.core.register(parse_function(spec.config(inprocess_runtime_for(app, spec.id)),
                                                    source=f"app {app.id}"))

    async def stop(self) -> None:
        if self._started:
            await self.core.stop()
            self._started = False

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the client's calls -------------------------------------------------------------------------------

    async def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        return await self.core.send(events)

    async def get_event(self, event_id: str) -> dict[str, Any]:
        event = await self._store.get_event(event_id)
        if event is None:
            raise NotFoundError(f"event {event_id} not found")
        return event_v1(event)

    async def get_event_runs(self, event_id: str) -> list[dict[str, Any]]:
        return [run_v1(r, self._environment_id) for r in await self._store.get_event_runs(event_id)]

    async def get_run(self, run_id: str) -> dict[str, Any]:
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFoundError(f"run {run_id} not found")
        return run_v1(run, self._environment_id)

    async def get_run_steps(self, run_id: str) -> list[dict[str, Any]]:
        return [step_v1(s) for s in await self._store.get_run_steps(run_id)]

    async def list_runs(self, *, status: str | None = None, function_id: str | None = None,
                        event_name: str | None = None, original_run_id: str | None = None,
                        since: datetime | None = None, until: datetime | None = None, query: str | None = None,
                        cursor: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first; every filter given must hold (`since`/`until`: when the runs were created; `query`: CEL
        over `event`, `output` and `run`, reading at most run_search.SCAN_BUDGET runs)."""
        where = RunFilter(RunStatus(status.upper()) if status else None, function_id, event_name, original_run_id,
                          int(since.timestamp() * 1000) if since else None,
                          int(until.timestamp() * 1000) if until else None, query)
        page = await list_runs(self._store, where, cursor=cursor, limit=limit)
        return [run_v1(r, self._environment_id) for r in page.runs]

    async def cancel(self, run_id: str) -> dict[str, Any]:
        run = await self._store.cancel_run(run_id, now_ms())
        if run is None:
            raise NotFoundError(f"run {run_id} not found")
        self.core.watcher.notify(run_id)
        return run_v1(run, self._environment_id)

    async def rerun(self, run_id: str, *, from_step: str | None = None) -> dict[str, Any]:
        """Rerun a run that has ended (from a step: keeping what came before it); returns the new run."""
        return run_v1(await self.core.rerun(run_id, from_step), self._environment_id)

    async def wait_for_run(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        run = await self.core.wait_for_run(run_id, timeout)
        if run is None:
            raise NotFoundError(f"run {run_id} not found")
        if not run.status.is_terminal:
            raise WaitTimeoutError(run_id, run.status.v1_name, timeout)
        return run_v1(run, self._environment_id)

    async def wait_for_output(self, id: str, timeout: float = 60.0) -> Any:
        """Output of a run (by run id, or the first run of an event id); raises RunFailedError or
        WaitTimeoutError like the client does."""
        deadline = time.monotonic() + timeout
        run_id = id
        if not (is_ulid(id) and await self._store.get_run(id.upper()) is not None):
            while True:
                runs = await self._store.get_event_runs(id)
                if runs:
                    run_id = runs[0].id
                    break
                if await self._store.get_event(id) is None:
                    raise NotFoundError(f"no run or event {id}")
                if time.monotonic() >= deadline:
                    raise WaitTimeoutError(None, None, timeout)
                await asyncio.sleep(0.01)
        run = await self.wait_for_run(run_id, max(0.0, deadline - time.monotonic()))
        if run["status"] != "Completed":
            raise RunFailedError(run_id, run["status"], run.get("error"))
        return run["output"]


def run(*apps: App, events: list[dict[str, Any]] | dict[str, Any] | None = None,
        store: str | None = "sqlite:///.stepflow/stepflow.db", timeout: float | None = None,
        config: EngineConfig | None = None) -> list[Any] | None:
    """Run apps embedded, blocking.

    With `events`: send them, wait for the runs they start, and return their outputs (in order).
    Without: keep running (cron triggers, timers) until interrupted.
    """
    async def main() -> list[Any] | None:
        async with Engine(*apps, store=store, config=config) as engine:
            if events is None:
                await asyncio.Event().wait()
                return None
            ids = await engine.send(events)
            outputs = []
            for event_id in ids:
                for run in await engine.get_event_runs(event_id):
                    outputs.append(await engine.wait_for_output(run["run_id"], timeout or 3600.0))
            return outputs

    return asyncio.run(main())
