"""The engine core (`EngineCore`): owns the store, the function registry and the runtimes; accepts events;
runs the worker loop.

Worker loop: claim due jobs (up to the free concurrency), execute each in its own task, sleep until new
work is announced, a slot frees up, or the earliest scheduled job falls due (never longer than the poll
interval, which is the guarantee when a wake-up is missed or comes from another process).

The database may go away (PostgreSQL restarting, a SQLite disk full): the loops log it once, back off (never
spin) and carry on when it is back. An executing job waits for the database to record its result — the step
is not executed again because its result could not be written for a while.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from stepflow.definitions import FunctionDef
from stepflow.engine import activity
from stepflow.engine.config import EngineConfig
from stepflow.engine.endpoints import is_endpoint_function
from stepflow.engine.executor import Executor
from stepflow.engine.operations import OperationRunner
from stepflow.engine.planner import plan_runs_for_event
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.reruns import plan_rerun
from stepflow.engine.runs import new_run
from stepflow.engine.scheduler import CronScheduler
from stepflow.engine.watch import RunWatcher
from stepflow.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StepflowError,
    StoreError,
    StoreUnavailableError,
)
from stepflow.events import validate_event
from stepflow.expressions import Expression
from stepflow.ids import new_ulid, now_ms
from stepflow.observability.metrics import Metrics, MetricsOff
from stepflow.observability.otlp import OtlpExporter
from stepflow.runtimes import default_runtimes
from stepflow.runtimes.base import Runtime, RuntimeRegistry
from stepflow.store.base import Store, StoreHooks
from stepflow.store.records import EventRecord, Job, OperationRecord, OperationStatus, RunRecord, RunStatus

log = logging.getLogger("stepflow.engine")
MIN_IDLE = 0.02  # seconds: the shortest sleep of an idle worker loop
FUNCTION_REFRESH_SECONDS = 2.0
SLOT_SWEEP_SECONDS = 1.0  # how often a worker looks for concurrency slots freed silently (store.wake_waiting)
OUTAGE_BACKOFF = (0.1, 2.0)  # seconds: first and longest pause between tries while the database is unavailable


class EngineCore:
    def __init__(self, store: Store, config: EngineConfig | None = None, *,
                 runtimes: list[Runtime] | None = None, run_workers: bool = True) -> None:
        self.store = store
        self.config = config or EngineConfig()
        self.functions = FunctionRegistry(store)
        self.runtimes = RuntimeRegistry()
        for runtime in runtimes if runtimes is not None else default_runtimes():
            self.runtimes.add(runtime)
        self.watcher = RunWatcher(store)
        self.metrics = Metrics() if self.config.metrics else MetricsOff()
        self._otlp: OtlpExporter | None = None
        store.attach(StoreHooks(pause_matcher=PauseMatcher(), run_ended=self._run_ended,
                                run_finished=lambda fid, status, ms: self.metrics.run_ended(fid, status, ms / 1000),
                                transaction_done=self.metrics.store_transactions.observe))
        self.outage = Outage()
        # the executor waits for an unavailable database instead of dropping what a step produced
        self.executor = Executor(cast(Store, PatientStore(store, self.outage)), self.functions, self.runtimes,
                                 self.config, self.metrics)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_ulid()[-6:]}"
        self._run_workers = run_workers
        self._wake = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._cron_task: asyncio.Task[None] | None = None
        self._operations_task: asyncio.Task[None] | None = None
        self._operations_wake = asyncio.Event()
        self._refresh_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._activity_tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        lock = self.store.engine_lock
        exclusive = self._run_workers and lock is not None
        if lock is not None and exclusive:
            lock.acquire_engine_lock()  # before the store opens the database: a refused engine must not touch it
        try:
            await self.store.open()
        except BaseException:
            if exclusive:
                await self.store.close()  # releases the lock
            raise
        if exclusive:
            # We are the only engine on this database: whatever is leased belongs to a dead predecessor.
            released = await self.store.release_leases(None, now_ms())
            if released:
                log.warning("recovered %d step(s) left in flight by a previous process", released)
        await self.functions.load_active()
        await self.runtimes.start()
        notifications = self.store.notifications
        if notifications is not None:  # other processes' work and run endings wake us (polling stays the guarantee)
            await notifications.subscribe(self._wake.set, self.watcher.notify)
        if self._run_workers:
            self._loop_task = asyncio.create_task(self._worker_loop(), name="stepflow-worker")
            self._lease_task = asyncio.create_task(self._renew_leases(), name="stepflow-leases")
            scheduler = CronScheduler(self.store, self.functions, self._wake)
            self._cron_task = asyncio.create_task(scheduler.run(), name="stepflow-cron")
            operations = OperationRunner(self.store, self.functions, self.worker_id, self.watcher.notify,
                                         self._wake.set, self._operations_wake, self.config.poll_interval,
                                         self.config.lease_seconds)
            self._operations_task = asyncio.create_task(operations.run(), name="stepflow-operations")
        # API-only processes too: they match events against functions other processes registered
        self._refresh_task = asyncio.create_task(self._refresh_functions(), name="stepflow-functions")
        # traces leave over OTLP when the standard variables say where (docs/observability.md)
        self._otlp = OtlpExporter.from_env(self.store)
        if self._otlp is not None:
            self._otlp.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; give in-flight steps `grace` seconds, then cancel them (their leases are released,
        so the next engine re-runs them — a step is only ever recorded once)."""
        self._stopping = True
        self._wake.set()
        self.watcher.close()  # long polls (?wait=) answer now instead of holding the shutdown
        for task in (self._loop_task, self._lease_task, self._cron_task, self._refresh_task, self._operations_task):
            if task is not None:
                task.cancel()
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight.values()), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._run_workers:
            try:
                await self.store.release_leases(self.worker_id, now_ms())
            except StoreError as exc:  # the database is away: the leases expire by themselves
                log.warning("could not release this worker's leases: %s", exc.message)
        await self.runtimes.close()
        if self._otlp is not None:
            await self._otlp.stop()  # what ended before the stop is exported
        await self.store.close()

    async def __aenter__(self) -> EngineCore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- functions and events -----------------------------------------------------------------------------

    async def register(self, fn: FunctionDef) -> int:
        return await self.functions.register(fn)

    async def ingest(self, events: list[EventRecord], trace: tuple[str, str] | None = None) -> list[str]:
        """Store events and start the runs they trigger, in one transaction; then wake the workers. `trace`:
        the sender's (trace id, span id), from its `traceparent`: the runs join that trace."""
        # keyed by the record itself: two events of one request may share an id (the second is a duplicate)
        matches = {id(ev): self.functions.matching(ev.name, ev.to_dict()) for ev in events}

        planned: dict[int, list[str]] = {}  # the events stored (duplicates are not planned), and their runs

        def plan(ev: EventRecord) -> list[Any]:
            runs = plan_runs_for_event(matches[id(ev)], ev)
            planned[id(ev)] = [run.function_id for run in runs]
            if trace is not None:
                for run in runs:
                    run.trace_id, run.parent_span_id = trace
            return runs

        ids = await self.store.ingest_events(events, plan)
        self.metrics.events_received.inc(len(planned))
        self._wake.set()  # new runs, or waits these events resolved
        if activity.enabled():
            for ev in events:
                if id(ev) in planned:
                    activity.event_received(ev, planned[id(ev)])
        return ids

    async def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """Send events from Python, validated exactly as `POST /e/{key}` validates them."""
        items = events if isinstance(events, list) else [events]
        received = now_ms()
        records = [validate_event(item, index=i if len(items) > 1 else None, received_at=received)
                   for i, item in enumerate(items)]
        return await self.ingest(records)

    async def invoke(self, function_id: str, event: dict[str, Any]) -> tuple[str, str]:
        """Start a run of one function (whatever its triggers) with `event`; returns (event id, run id)."""
        found = self.functions.get_active(function_id)
        if found is None:
            raise NotFoundError(f"no function {function_id!r} is registered")
        version, fn = found
        record = validate_event(event, index=None, received_at=now_ms())
        runs = [new_run(fn, version, record.to_dict(), record.received_at)]
        await self.store.ingest_events([record], lambda ev: runs)
        self._wake.set()
        return record.id, runs[0].run_id

    async def pause_function(self, function_id: str) -> dict[str, Any]:
        """Pause a function (store: `pause_function`); it holds across restarts and every process."""
        found = self.functions.get_active(function_id)
        if found is None:
            raise NotFoundError(f"no function {function_id!r} is registered")
        if is_endpoint_function(found[1]):
            # its runs execute inside the requests the app serves: stepflow cannot hold a request it does not
            # serve, and parking only the part after a sleep or a failed step would be a pause in name only
            raise ConflictError(f"{function_id!r} is a durable endpoint: its runs execute inside the requests your "
                                "app serves, which stepflow cannot hold back; stop routing requests to it instead")
        since, paused = await self.store.pause_function(function_id, now_ms())
        log.info("function %s paused (%d run(s) paused)", function_id, paused)
        return {"function_id": function_id, "paused": True, "paused_at": since, "runs_paused": paused}

    async def resume_function(self, function_id: str, *, cancel_paused: bool = False) -> dict[str, Any]:
        if self.functions.get_active(function_id) is None:
            raise NotFoundError(f"no function {function_id!r} is registered")
        run_ids = await self.store.resume_function(function_id, now_ms(), cancel_paused=cancel_paused)
        for run_id in run_ids:
            self.watcher.notify(run_id)
        self._wake.set()
        log.info("function %s resumed (%d paused run(s) %s)", function_id, len(run_ids),
                 "cancelled" if cancel_paused else "going on")
        return {"function_id": function_id, "paused": False,
                "runs_cancelled" if cancel_paused else "runs_resumed": len(run_ids)}

    async def cancel_many(self, function_id: str, *, created_from: int | None = None,
                          created_until: int | None = None, condition: str | None = None) -> OperationRecord:
        """Start a durable bulk cancel of `function_id`'s runs created in [from, until) (until: now) that have not
        ended, where the CEL `condition` over `event` holds (engine/operations.py). Returns it, `total` counted."""
        if condition is not None:
            Expression(condition)  # compiles, or a clear 400 now rather than a failed operation later
        return await self._start_operation("cancel", function_id, created_from, created_until,
                                           {} if condition is None else {"if": condition})

    async def replay(self, function_id: str, *, created_from: int | None = None, created_until: int | None = None,
                     statuses: list[RunStatus] | None = None, event_name: str | None = None,
                     rate: int | None = None) -> OperationRecord:
        """Start a durable replay into `function_id`'s current version: with `statuses`, one new run per run of
        the function in [from, until) in one of them (linked by `original_run_id`); without, one per event received
        in [from, until) that triggers the function (`event_name`: only that name). At most `rate` runs/s."""
        found = self.functions.get_active(function_id)
        if found is None:
            raise NotFoundError(f"no function {function_id!r} is registered")
        if rate is not None and not 1 <= rate <= 10_000:
            raise InvalidRequestError("'rate' must be between 1 and 10000 runs a second")
        params: dict[str, Any] = {} if rate is None else {"rate": rate}
        if statuses:
            params["statuses"] = sorted({s.value for s in statuses})
        if event_name:
            params["event_name"] = event_name
            params["names"] = [event_name]
        elif not statuses:
            triggers = [t.event for t in found[1].triggers if t.event]
            if not triggers:
                raise InvalidRequestError(f"function {function_id!r} has no event trigger: there are no events to "
                                          "replay into it (replay its runs with 'statuses')")
            # a wildcard trigger: every event in the range is looked at (and matched one by one)
            params["names"] = None if any(t.endswith("*") for t in triggers) else triggers
        return await self._start_operation("replay", function_id, created_from, created_until, params)

    async def _start_operation(self, kind: str, function_id: str, created_from: int | None,
                               created_until: int | None, params: dict[str, Any]) -> OperationRecord:
        if self.functions.get_active(function_id) is None:
            raise NotFoundError(f"no function {function_id!r} is registered")
        now = now_ms()
        until = min(created_until, now) if created_until is not None else now
        if created_from is not None and created_from >= until:
            raise InvalidRequestError("'from' must be before 'until' (and before now)")
        params = {**params, "until": until, **({} if created_from is None else {"from": created_from})}
        op = await self.store.create_operation(OperationRecord(
            id=new_ulid(), kind=kind, function_id=function_id, params=params, status=OperationStatus.RUNNING,
            created_at=now))
        self._operations_wake.set()
        return op

    async def rerun(self, run_id: str, from_step: str | None = None) -> RunRecord:
        """A new run of the function's current version for the same event, linked to `run_id`; from a step, it
        keeps what came before (engine/reruns.py). Returns the new run."""
        original = await self.store.load_run_state(run_id)
        if original is None:
            raise NotFoundError(f"run {run_id} not found")
        found = self.functions.get_active(original.run.function_id)
        if found is None:
            raise ConflictError(f"function {original.run.function_id!r} is no longer registered: its runs cannot be "
                                "rerun")
        version, fn = found
        rerun = plan_rerun(original, fn, version, from_step)
        await self.store.add_run(rerun, original.run.event_id, now_ms())
        self._wake.set()
        created = await self.store.get_run(rerun.run_id)
        assert created is not None
        return created

    async def wait_for_run(self, run_id: str, timeout: float) -> RunRecord | None:
        return await self.watcher.wait(run_id, timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run_ended(self, run_id: str) -> None:
        # called inside the store's transaction: only schedule the notification
        loop = asyncio.get_running_loop()
        loop.call_soon(self.watcher.notify, run_id)
        if self._otlp is not None:
            loop.call_soon(self._otlp.run_ended, run_id)
        self._wake.set()  # an ended run may have resumed a parent (invoke) with new work
        if activity.enabled():
            task = loop.create_task(self._log_run_end(run_id))
            self._activity_tasks.add(task)
            task.add_done_callback(self._activity_tasks.discard)

    async def _log_run_end(self, run_id: str) -> None:
        await asyncio.sleep(0)  # after the transaction that ended it has committed
        try:
            run = await self.store.get_run(run_id)
        except StepflowError:
            return  # the store is closing or away: the line is not worth an error
        if run is not None:
            activity.run_ended(run)

    # --- worker -------------------------------------------------------------------------------------------

    async def _worker_loop(self) -> None:
        lease_ms = int(self.config.lease_seconds * 1000)
        swept_at = 0.0
        while not self._stopping:
            try:
                if time.monotonic() - swept_at >= SLOT_SWEEP_SECONDS:
                    # concurrency slots freed without a word (a crashed worker's lease lapsing) go to the next
                    # waiting steps; every release that is seen wakes them at once
                    swept_at = time.monotonic()
                    await self.store.wake_waiting(now_ms())
                free = self.config.concurrency - len(self._inflight)
                jobs: list[Job] = []
                self._wake.clear()
                if free > 0:
                    jobs = await self.store.claim_jobs(self.worker_id, free, lease_ms, now_ms())
                    if jobs:  # a claim was written: the database takes writes again
                        self.outage.ended()
                    for job in jobs:
                        if job.lease_expired:
                            self.metrics.leases_expired.inc()
                        if job.started_run:
                            self.metrics.runs_started.labels(job.function_id).inc()
                            if activity.enabled():
                                activity.run_started(job.run_id, job.function_id)
                        task = asyncio.create_task(self._execute(job))
                        self._inflight[job.id] = task
                if free <= 0 or len(jobs) == free:
                    await self._wake.wait()  # full: wait for a slot (set by _execute) or new work
                    continue
                if jobs:
                    continue  # claimed something: there may be more due right away
                # Nothing claimable. A job may be due yet not claimable (a call waiting for another call of
                # its run to finish): never spin on it — sleep until woken (new work, a freed slot, a run's
                # call finishing) or until the next job falls due, at least MIN_IDLE.
                due = await self.store.next_due_at()
                timeout = self.config.poll_interval
                if due is not None:
                    timeout = min(timeout, (due - now_ms()) / 1000)
                try:
                    await asyncio.wait_for(self._wake.wait(), max(MIN_IDLE, timeout))
                except TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:  # the database is away: wait for it (leases protect the work)
                await asyncio.sleep(self.outage.began(exc))
            except Exception:  # the store hiccuped: log, back off, keep going (leases protect the work)
                log.exception("worker loop error; retrying in 1s")
                await asyncio.sleep(1.0)

    async def _execute(self, job: Job) -> None:
        try:
            ended = await self.executor.execute(job)
            if ended is not None:
                self.watcher.notify(ended.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Nothing was recorded: the job stays leased and is retried when the lease expires.
            log.exception("failed to execute run %s step %s; it will be retried", job.run_id, job.step_id)
        finally:
            self._inflight.pop(job.id, None)
            self._wake.set()

    async def _refresh_functions(self) -> None:
        """Functions registered by other processes (an API server, an SDK sync) become known here too."""
        while True:
            await asyncio.sleep(FUNCTION_REFRESH_SECONDS)
            try:
                await self.functions.load_active()
                if not self._run_workers:
                    self.outage.ended()  # an API process: its reads are what it waits for
            except StoreUnavailableError as exc:
                self.outage.began(exc)
            except Exception:
                log.exception("could not refresh the function registry")

    async def _renew_leases(self) -> None:
        """Extend the leases of the jobs executing here (only those: see `Store.renew_leases`). A failed
        renewal is tried again soon, so a short outage of the database does not cost the leases."""
        interval = self.config.lease_seconds / 3
        delay = interval
        while True:
            await asyncio.sleep(delay)
            delay = interval
            if self._inflight:
                try:
                    await self.store.renew_leases(self.worker_id, now_ms() + int(self.config.lease_seconds * 1000),
                                                  list(self._inflight))
                except StoreUnavailableError as exc:
                    delay = min(interval, self.outage.began(exc))
                except Exception:
                    log.exception("lease renewal failed")
                    delay = min(interval, 1.0)


class Outage:
    """The database being unavailable, as this process sees it: logged once when it begins and once when it
    ends (not once per operation), with the pause to take before trying again (growing while it lasts)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self._failures = 0

    def began(self, exc: StoreError) -> float:
        """An operation found the database unavailable; returns the seconds to wait before trying again."""
        if self.since is None:
            self.since = time.monotonic()
            self._failures = 0
            log.warning("the database is unavailable (%s); waiting for it", exc.message)
        self._failures += 1
        first, longest = OUTAGE_BACKOFF
        return float(min(longest, first * 2 ** min(self._failures - 1, 10)))

    def ended(self) -> None:
        if self.since is not None:
            log.warning("the database is available again (after %.1fs)", time.monotonic() - self.since)
            self.since = None


class PatientStore:
    """The store as the executor sees it: an operation that finds the database unavailable is tried again,
    backing off, until it goes through (or the engine stops and cancels the job). So a step that executed
    while the database was away has its result recorded once it is back — by the lease holder, guarded by the
    job's token — instead of being executed again when its lease expires; and no step starts meanwhile."""

    def __init__(self, store: Store, outage: Outage) -> None:
        self._store = store
        self._outage = outage

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute
        return self._patient(attribute)

    def _patient(self, operation: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        outage = self._outage

        async def patient(*args: Any, **kwargs: Any) -> Any:
            failed = False
            while True:
                try:
                    result = await operation(*args, **kwargs)
                except StoreUnavailableError as exc:
                    failed = True
                    await asyncio.sleep(outage.began(exc))
                    continue
                if failed:  # what failed goes through now (a read succeeding says nothing: a full disk reads)
                    outage.ended()
                return result

        return patient


class PauseMatcher:
    """Evaluates pause expressions (CEL over `event`, the waiting run's trigger, and `async`, the candidate).

    Expressions are compiled once. One that cannot be evaluated for a candidate (e.g. a missing field) does
    not match it: the wait goes on for a matching event or its timeout.
    """

    def __init__(self) -> None:
        self._compiled: dict[str, Expression] = {}

    def __call__(self, expression: str | None, run_event: dict[str, Any], candidate: dict[str, Any]) -> bool:
        if expression is None:
            return True
        try:
            compiled = self._compiled.get(expression)
            if compiled is None:
                compiled = self._compiled[expression] = Expression(expression)
            return compiled.is_true({"event": run_event, "async": candidate})
        except Exception:  # noqa: BLE001
            return False
