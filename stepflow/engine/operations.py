"""Durable bulk operations, run in the background by any engine process: a bulk cancel walks its function's runs
in its time range oldest first, a batch at a time, and saves its progress (cursor and counts) after each batch.
One process holds an operation at a time (a lease, renewed with every save); when that process dies, another
takes it over from the saved cursor. Cancelling a run twice is harmless (a run that has ended stays as it is),
so a batch repeated after a crash changes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from stepflow.errors import ExpressionError, StoreError
from stepflow.expressions import Expression
from stepflow.ids import now_ms
from stepflow.store.base import Store
from stepflow.store.records import OperationRecord, RunStatus

log = logging.getLogger("stepflow.engine")

BATCH = 200
LEASE_MS = 30_000


class OperationRunner:
    def __init__(self, store: Store, worker_id: str, notify_run: Callable[[str], None], wake: asyncio.Event,
                 poll_interval: float) -> None:
        self._store = store
        self._worker_id = worker_id
        self._notify_run = notify_run
        self._wake = wake
        self._poll = poll_interval

    async def run(self) -> None:
        while True:
            try:
                op = await self._store.claim_operation(self._worker_id, now_ms(), LEASE_MS)
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
        condition = Expression(op.params["if"]) if op.params.get("if") else None
        while True:
            batch = await self._store.operation_batch(op, BATCH)
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
                run = await self._store.cancel_run(run_id, now_ms())
                if run is not None:
                    self._notify_run(run_id)
                if run is not None and run.status is RunStatus.CANCELLED:
                    op.succeeded += 1
                    op.processed += 1  # a run that ended meanwhile counts in neither
            done = len(batch) < BATCH
            if not await self._store.save_operation(op, self._worker_id, now_ms(), LEASE_MS, done=done):
                return  # stopped by a person, or taken over after our lease lapsed
            if done:
                log.info("bulk cancel %s of %s done: %d cancelled, %d skipped", op.id, op.function_id,
                         op.succeeded, op.skipped)
                return
