"""Durable bulk operations, run in the background by any engine process: a bulk cancel walks its function's runs
in its time range oldest first, a batch at a time, and saves its progress (cursor and counts) after each batch; a
replay walks events (or the events of runs) and starts a run for each, at a bounded rate.
One process holds an operation at a time (a lease, renewed with every save); when that process dies, another
takes it over from the saved cursor. Cancelling a run twice is harmless (a run that has ended stays as it is),
so a batch repeated after a crash changes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from stepflow.definitions import FunctionDef
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.runs import new_run
from stepflow.errors import ExpressionError, StoreError
from stepflow.expressions import Expression
from stepflow.ids import now_ms
from stepflow.store.base import Store
from stepflow.store.records import NewRun, OperationRecord

log = logging.getLogger("stepflow.engine")

BATCH = 200
DEFAULT_REPLAY_RATE = 100  # runs started a second by a replay


def _triggers(fn: FunctionDef, name: str, event: dict[str, Any]) -> bool:
    try:
        return fn.matches(name, event)
    except ExpressionError:
        return False  # the trigger's `if` cannot say yes for this event


class OperationRunner:
    def __init__(self, store: Store, functions: FunctionRegistry, worker_id: str, notify_run: Callable[[str], None],
                 on_work: Callable[[], None], wake: asyncio.Event, poll_interval: float, lease_seconds: float) -> None:
        self._store = store
        self._functions = functions
        self._on_work = on_work
        self._worker_id = worker_id
        self._notify_run = notify_run
        self._wake = wake
        self._poll = poll_interval
        # the engine's job lease: a process that died holding an operation gives it up as soon as its jobs
        self._lease_ms = int(lease_seconds * 1000)

    async def run(self) -> None:
        while True:
            try:
                op = await self._store.claim_operation(self._worker_id, now_ms(), self._lease_ms)
                if op is not None:
                    await self._work(op)
                    continue
            except StoreError as exc:
                log.warning("bulk operations: the store failed (%s); retrying", exc.message)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            except TimeoutError:
                pass

    async def _work(self, op: OperationRecord) -> None:
        if op.kind == "replay":
            await self._replay(op)
        else:
            await self._cancel(op)

    async def _replay(self, op: OperationRecord) -> None:
        """Start a run of the function's current version per event, at most `rate` a second: the runs of a batch
        and the cursor past it are stored in one transaction, so a takeover never starts a run twice."""
        rate = max(1, int(op.params.get("rate") or DEFAULT_REPLAY_RATE))
        while True:
            found = self._functions.get_active(op.function_id)
            if found is None:  # removed meanwhile: nothing to start runs of; end, saying so in the log
                log.warning("replay %s: function %s is no longer registered; stopping", op.id, op.function_id)
                await self._store.save_operation(op, self._worker_id, now_ms(), self._lease_ms, done=True)
                return
            version, fn = found
            batch = await self._store.replay_batch(op, min(BATCH, rate))
            now = now_ms()
            runs: list[tuple[NewRun, str]] = []
            for cursor, event, replayed_run in batch:
                op.cursor = cursor
                op.processed += 1
                wanted = op.params.get("event_name")
                if replayed_run is None and ((wanted and event.name != wanted)
                                             or not _triggers(fn, event.name, event.to_dict())):
                    op.skipped += 1
                    continue
                run = new_run(fn, version, event.to_dict(), now)
                run.idempotency_key = None  # a replay is an explicit ask for one more run of the event
                run.original_run_id, run.operation_id = replayed_run, op.id
                runs.append((run, event.id))
                op.succeeded += 1
            done = len(batch) < min(BATCH, rate)
            if not await self._store.save_operation(op, self._worker_id, now, self._lease_ms, done=done, runs=runs):
                return
            if runs:
                self._on_work()
            if done:
                log.info("replay %s of %s done: %d run(s) started", op.id, op.function_id, op.succeeded)
                return
            await asyncio.sleep(len(batch) / rate)  # the bound on the rate: live traffic keeps its share

    async def _cancel(self, op: OperationRecord) -> None:
        """Cancel the batch's matching runs and save the cursor past them in one transaction, batch by batch."""
        condition = Expression(op.params["if"]) if op.params.get("if") else None
        while True:
            batch = await self._store.operation_batch(op, BATCH)
            chosen: list[str] = []
            for run_id, status, event in batch:
                op.cursor = run_id
                if status.is_terminal:
                    continue
                if condition is not None:
                    try:
                        matches = condition.is_true({"event": event.to_dict() if event else {}})
                    except ExpressionError:
                        matches = False  # the condition cannot say yes for this event (a missing field…)
                    if not matches:
                        op.skipped += 1
                        op.processed += 1
                        continue
                chosen.append(run_id)
            done = len(batch) < BATCH
            if not await self._store.save_operation(op, self._worker_id, now_ms(), self._lease_ms, done=done,
                                                    cancel=chosen):
                return  # stopped by a person, or taken over after our lease lapsed
            for run_id in chosen:
                self._notify_run(run_id)  # waiters on these runs read them again
            if done:
                log.info("bulk cancel %s of %s done: %d cancelled, %d skipped", op.id, op.function_id,
                         op.succeeded, op.skipped)
                return
