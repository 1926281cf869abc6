"""What happens inside a store transaction, written once for every SQL backend: inserting events, runs, jobs
and pauses, resolving waits, ending runs, writing steps, applying a decision and checking that it left the
run with something to do. `SqlStore` (store/sql.py) builds each public operation from these in one
transaction; the backends (sqlite.py, postgres.py) provide the connection, the transaction and the locks.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from stepflow import codec
from stepflow.errors import StoreError
from stepflow.store import flow
from stepflow.store.base import AdvanceRun, Store, StoreHooks
from stepflow.store.flow import PARKED as PARKED  # re-exported: the marker other store modules import from here
from stepflow.store.records import (
    EventRecord,
    Job,
    JobKind,
    NewEvent,
    NewJob,
    NewPause,
    NewRun,
    Pause,
    RunRecord,
    RunSlots,
    RunState,
    RunStatus,
    SpanRecord,
    StepRecord,
    StepStatus,
    StepWrite,
)

RUN_COLUMNS = ("id, function_id, function_version, app_id, event_id, status, created_at, started_at, "
               "ended_at, output, error, original_run_id, trace_id, parent_span_id")
STEP_COLUMNS = ("run_id, step_id, status, attempts, scheduled_at, started_at, ended_at, output, error, seq, "
                "logs, name, kind")
PAUSE_COLUMNS = "id, run_id, step_id, kind, event_name, expression, child_run_id, expires_at"
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
EVENT_DEDUP_WINDOW_MS = 24 * 3600 * 1000
TERMINAL_SQL = "('COMPLETED', 'FAILED', 'CANCELLED')"

T = TypeVar("T")
Row = Sequence[Any]


class Conn(Protocol):
    """What the logic needs of a connection; SQL uses `?` placeholders."""

    async def execute(self, sql: str, *args: Any) -> int: ...   # rows affected

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


def run_record(row: Row) -> RunRecord:
    return RunRecord(id=row[0], function_id=row[1], function_version=row[2], app_id=row[3], event_id=row[4],
                     status=RunStatus(row[5]), created_at=row[6], started_at=row[7], ended_at=row[8],
                     output=codec.unpack(row[9]), error=codec.unpack(row[10]), original_run_id=row[11],
                     trace_id=row[12], parent_span_id=row[13])


def step_record(row: Row) -> StepRecord:
    return StepRecord(run_id=row[0], step_id=row[1], status=StepStatus(row[2]), attempts=row[3],
                      scheduled_at=row[4], started_at=row[5], ended_at=row[6], output=codec.unpack(row[7]),
                      error=codec.unpack(row[8]), seq=row[9], logs=row[10], name=row[11], kind=row[12])


def event_record(row: Row) -> EventRecord:
    payload = codec.unpack(row[1])
    return EventRecord(id=row[0], name=payload["name"], data=payload["data"], ts=payload["ts"],
                       received_at=row[2], user=payload.get("user"), v=payload.get("v"))


def span_row(span: SpanRecord | None) -> dict[str, Any] | None:
    """A span as kept in its step's row."""
    if span is None:
        return None
    return {"span_id": span.span_id, "parent_id": span.parent_id, "name": span.name, "start": span.start,
            "end": span.end, "status": span.status, "attributes": span.attributes}


def new_trace_id() -> str:
    """A W3C trace id: 32 hex digits, not all zero."""
    return os.urandom(16).hex()


def run_slots(run: NewRun) -> RunSlots | None:
    """A new run's concurrency slots and priority, as its jobs carry them (None: it has neither)."""
    if run.flow is None or (not run.flow.slots and not run.flow.priority_ms):
        return None
    slots: list[tuple[str | None, int | None]] = [*run.flow.slots, (None, None), (None, None)]
    return (slots[0][0], slots[0][1], slots[1][0], slots[1][1], run.flow.priority_ms)


def pack(value: Any) -> bytes | None:
    return codec.pack(value) if value is not None else None


class SqlBase(Store):
    """The transaction-internal writes. Backends provide `open`, `close`, `_transaction`, `_read`, `_lock_run` and
    `skip_locked`."""

    url: str
    skip_locked = ""  # appended to the claim's row selection where the backend supports it
    for_update = ""   # appended to a selection whose rows the transaction must hold (where transactions overlap)

    def __init__(self) -> None:
        self.hooks = StoreHooks()  # until the engine attaches its own

    async def _transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError  # pragma: no cover - every backend overrides it

    async def _read(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError  # pragma: no cover

    async def _lock_run(self, c: Conn, run_id: str) -> None:
        """Serialize decisions about one run (a no-op where transactions are serial already)."""

    async def _lock_key(self, c: Conn, key: str) -> None:
        """Serialize decisions about one flow-control key (a concurrency slot, a throttle, a singleton…) until the
        transaction ends (a no-op where transactions are serial already)."""

    async def _lock_keys(self, c: Conn, keys: list[str]) -> None:
        """`_lock_key` for each of `keys`, in the order given (callers sort them: no deadlock between two)."""
        for key in keys:
            await self._lock_key(c, key)

    async def _work_added(self, c: Conn) -> None:
        """New due work was written in this transaction (a backend may wake other processes)."""

    async def _insert_event(self, c: Conn, ev: EventRecord) -> bool:
        """False when the id was stored less than 24 h ago: a duplicate, to be ignored.

        An id reused after the window starts a new event: the old one is kept under `<id>:<received_at>`
        (its runs follow it), so nothing is lost and the id names the latest event.
        """
        args = (ev.id, ev.name, codec.pack(ev.to_dict()), ev.ts, ev.received_at)
        insert = ("INSERT INTO events (id, name, payload, ts, received_at) VALUES (?, ?, ?, ?, ?) "
                  "ON CONFLICT DO NOTHING")
        if await c.execute(insert, *args) == 1:
            return True
        received = await c.fetchval("SELECT received_at FROM events WHERE id=?", ev.id)
        if received is None or ev.received_at - received < EVENT_DEDUP_WINDOW_MS:
            return False
        archived = f"{ev.id}:{received}"
        await c.execute("UPDATE events SET id=? WHERE id=?", archived, ev.id)
        await c.execute("UPDATE runs SET event_id=? WHERE event_id=?", archived, ev.id)
        await c.execute(insert, *args)
        return True

    async def _insert_new_event(self, c: Conn, new: NewEvent) -> None:
        if await self._insert_event(c, new.event):
            for run in new.runs:
                await self._insert_run(c, run, new.event.id, new.event.received_at)
            await self._match_pauses(c, new.event)

    async def _insert_run(self, c: Conn, run: NewRun, event_id: str | None, now: int) -> bool:
        if run.idempotency_key is not None:
            expires = await c.fetchval("SELECT expires_at FROM idempotency WHERE function_id=? AND key=?",
                                       run.function_id, run.idempotency_key)
            if expires is not None and expires > now:
                return False  # a run for this key already exists: this event starts nothing
            await c.execute("INSERT INTO idempotency (function_id, key, run_id, expires_at) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (function_id, key) DO UPDATE SET run_id=excluded.run_id, "
                            "expires_at=excluded.expires_at",
                            run.function_id, run.idempotency_key, run.run_id, now + IDEMPOTENCY_TTL_MS)
        hold = None
        if run.flow is not None:
            admitted, hold = await self._admit(c, run, event_id, now)
            if not admitted:
                return False
        if run.status is RunStatus.QUEUED and await c.fetchval(
                "SELECT 1 FROM paused_functions WHERE function_id=?", run.function_id) is not None:
            run.status = RunStatus.PAUSED  # stored, nothing executed until the function is resumed
        start_deadline = now + run.start_timeout_ms if run.start_timeout_ms is not None else None
        slots = run_slots(run)
        await c.execute(f"INSERT INTO runs ({RUN_COLUMNS}, finish_timeout_ms, start_deadline, operation_id, slot1, "
                        "limit1, slot2, limit2, priority_ms, singleton_key, batched) VALUES (?, ?, ?, ?, ?, ?, ?, "
                        "NULL, NULL, NULL, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        run.run_id, run.function_id, run.function_version, run.app_id, event_id, run.status.value,
                        now, run.original_run_id, run.trace_id or new_trace_id(), run.parent_span_id,
                        run.finish_timeout_ms, start_deadline, run.operation_id,
                        *(slots[:4] if slots else (None, None, None, None)), slots[4] if slots else 0,
                        run.flow.singleton[0] if run.flow and run.flow.singleton else None,
                        1 if run.flow and run.flow.batch else 0)
        for kept in run.steps:  # a rerun from a step: the results it keeps, in their recorded order
            await self._write_step(c, run.run_id, kept)
        await self._insert_jobs(c, run.run_id, run.jobs, now, slots=slots, hold=hold)
        if run.start_timeout_ms is not None:
            await self._insert_jobs(c, run.run_id, [NewJob("", now + run.start_timeout_ms, JobKind.RUN_TIMEOUT,
                                                           {"which": "start"}, step_row=False)], now)
        for pause in run.pauses:
            await self._insert_pause(c, pause, now)
        return True

    async def _admit(self, c: Conn, run: NewRun, event_id: str | None, now: int) -> tuple[bool, str | None]:
        """The run-level controls, in Inngest's order: rate limit, debounce, singleton, throttle. Returns whether
        the run is stored, and why its first jobs are held back (`debounce`, `throttle`) if they are."""
        control = run.flow
        assert control is not None
        hold = None
        if control.rate_limit is not None:
            key, interval, tolerance = control.rate_limit
            await self._lock_key(c, key)
            if await flow.gcra(c, key, interval, tolerance, now, queue=False) is None:
                await flow.record_skip(c, event_id, run.function_id, "rate_limit",
                                       "rate limited: the function's rate_limit allows no more runs now"
                                       + (f" for key {key.split(':', 2)[2]!r}" if key.split(":", 2)[2] else ""), now)
                return False, None
        if control.batch is not None:
            added, hold = await self._batch(c, run, event_id, now)
            if added:
                return False, None
        if control.debounce is not None:
            key, period, timeout = control.debounce
            await self._lock_key(c, f"d:{run.function_id}:{key}")
            row = await c.fetchrow("SELECT d.run_id, d.first_at, r.event_id FROM debounces d JOIN runs r ON "
                                   "r.id = d.run_id WHERE d.function_id=? AND d.key=?", run.function_id, key)
            if row is not None and not await self._still_queued(c, row[0]):
                row = None  # its run started meanwhile: this event begins a new burst
            if row is not None:  # the burst goes on: its run waits longer, and takes this (the last) event
                due = now + period if timeout is None else min(now + period, row[1] + timeout)
                await c.execute("UPDATE runs SET event_id=? WHERE id=?", event_id, row[0])
                await c.execute("UPDATE jobs SET available_at=?, queued_at=? WHERE run_id=? AND hold='debounce' AND "
                                "lease_owner IS NULL", due, due, row[0])
                await flow.record_skip(c, row[2], run.function_id, "debounce",
                                       f"debounced: event {event_id} came later, and run {row[0]} takes it", now)
                return False, None
            await c.execute("DELETE FROM debounces WHERE function_id=? AND key=?", run.function_id, key)
            await c.execute("INSERT INTO debounces (function_id, key, run_id, first_at) VALUES (?, ?, ?, ?)",
                            run.function_id, key, run.run_id, now)
            for job in run.jobs:
                job.available_at = max(job.available_at, now + period)
            hold = "debounce"
        if control.singleton is not None:
            key, mode = control.singleton
            await self._lock_key(c, f"s:{run.function_id}:{key}")
            active = await c.fetchval(f"SELECT s.run_id FROM singletons s JOIN runs r ON r.id = s.run_id WHERE "
                                      f"s.function_id=? AND s.key=? AND r.status NOT IN {TERMINAL_SQL}",
                                      run.function_id, key)
            if active is not None and mode == "skip":
                await flow.record_skip(c, event_id, run.function_id, "singleton",
                                       f"skipped: run {active} of this singleton function is still active", now)
                return False, None
            if active is not None:
                await self._lock_run(c, active)
                await self._finish_run(c, active, RunStatus.CANCELLED, None, {
                    "code": "singleton", "message": f"cancelled: event {event_id} started a new run of this "
                    "singleton function (mode cancel)"}, now)
            await c.execute("INSERT INTO singletons (function_id, key, run_id) VALUES (?, ?, ?) ON CONFLICT "
                            "(function_id, key) DO UPDATE SET run_id=excluded.run_id", run.function_id, key, run.run_id)
        if control.throttle is not None and hold is None:
            key, interval, tolerance = control.throttle
            await self._lock_key(c, key)
            start = await flow.gcra(c, key, interval, tolerance, now, queue=True)
            if start is not None and start > now:
                for job in run.jobs:
                    job.available_at = max(job.available_at, start)
                hold = "throttle"
        return True, hold

    async def _batch(self, c: Conn, run: NewRun, event_id: str | None, now: int) -> tuple[bool, str | None]:
        """Event batching: add the event to its key's open batch (True; full, the batch's run starts now), or
        open a batch with a new run whose first jobs wait `timeout` for more events."""
        assert run.flow is not None and run.flow.batch is not None
        key, max_size, timeout = run.flow.batch
        await self._lock_key(c, f"b:{run.function_id}:{key}")
        row = await c.fetchrow("SELECT run_id, size FROM batches WHERE function_id=? AND key=?", run.function_id, key)
        if row is not None and not await self._still_queued(c, row[0]):
            row = None  # its run started meanwhile: this event opens a new batch
        if row is not None:
            batch_run, size = row[0], int(row[1]) + 1
            await c.execute("INSERT INTO run_events (run_id, seq, event_id) VALUES (?, ?, ?)", batch_run, size - 1,
                            event_id)
            await c.execute("UPDATE runs SET batched=? WHERE id=?", size, batch_run)
            if size >= max_size:  # full: it starts now, and the next event opens a new batch
                await c.execute("DELETE FROM batches WHERE function_id=? AND key=?", run.function_id, key)
                await c.execute("UPDATE jobs SET available_at=?, queued_at=?, hold=NULL WHERE run_id=? AND "
                                "hold='batch' AND lease_owner IS NULL", now, now, batch_run)
                await self._work_added(c)
            else:
                await c.execute("UPDATE batches SET size=? WHERE function_id=? AND key=?", size, run.function_id,
                                key)
            return True, None
        await c.execute("DELETE FROM batches WHERE function_id=? AND key=?", run.function_id, key)
        await c.execute("INSERT INTO run_events (run_id, seq, event_id) VALUES (?, 0, ?)", run.run_id, event_id)
        if max_size <= 1:
            return False, None
        await c.execute("INSERT INTO batches (function_id, key, run_id, size, max_size) VALUES (?, ?, ?, 1, ?)",
                        run.function_id, key, run.run_id, max_size)
        for job in run.jobs:
            job.available_at = max(job.available_at, now + timeout)
        return False, "batch"

    async def _still_queued(self, c: Conn, run_id: str) -> bool:
        """Has the run not started, and can it not start before this transaction ends? Its jobs are locked first,
        in the order a claim locks rows (jobs, then the run): a claim leasing one of them has either committed
        (the lease shows) or waits for us (SKIP LOCKED passes them by)."""
        jobs = await c.fetch(f"SELECT lease_owner FROM jobs WHERE run_id=? AND kind IN ('step', 'call')"
                             f"{self.for_update}", run_id)
        if any(row[0] is not None for row in jobs):
            return False
        await self._lock_run(c, run_id)
        return bool(await c.fetchval("SELECT status FROM runs WHERE id=?", run_id) == RunStatus.QUEUED.value)

    async def _run_slots(self, c: Conn, run_id: str) -> RunSlots | None:
        row = await c.fetchrow("SELECT slot1, limit1, slot2, limit2, priority_ms FROM runs WHERE id=?", run_id)
        return flow.as_slots(row) if row is not None else None

    async def _insert_jobs(self, c: Conn, run_id: str, jobs: list[NewJob], now: int, *,
                           slots: RunSlots | None | bool = True, hold: str | None = None) -> None:
        """`slots`: the run's concurrency slots and priority if the caller knows them (None: it has none), else
        read from the run when a job needs them. `hold`: why these jobs are not due now (debounce, throttle)."""
        for job in jobs:
            if slots is True and job.kind in (JobKind.STEP, JobKind.CALL):
                slots = await self._run_slots(c, run_id)
            run_flow = slots if not isinstance(slots, bool) else None
            if job.kind is JobKind.CALL and not job.payload:
                await self._enqueue_call(c, run_id, job.available_at, now, job.attempt, run_flow, hold)
                continue
            await flow.insert_job(c, run_id, job.step_id, job.kind.value, pack(job.payload), job.available_at,
                                  job.attempt, run_flow, now, hold)
            if job.step_row:
                await c.execute("INSERT INTO steps (run_id, step_id, status, scheduled_at, name, kind) "
                                "VALUES (?, ?, 'scheduled', ?, ?, ?) ON CONFLICT (run_id, step_id) DO UPDATE SET "
                                "status='scheduled', scheduled_at=excluded.scheduled_at",
                                run_id, job.step_id, job.available_at, job.name, job.step_kind)

    async def _enqueue_call(self, c: Conn, run_id: str, at: int, now: int, attempt: int = 0,
                            slots: RunSlots | None | bool = True, hold: str | None = None) -> None:
        """At most one waiting (unleased) untargeted call per run: calling twice would replay twice."""
        row = await c.fetchrow("SELECT id, available_at, waiting_on FROM jobs WHERE run_id=? AND kind='call' AND "
                               "payload IS NULL AND lease_owner IS NULL", run_id)
        if row is not None:
            if row[2] is not None:  # waiting for a concurrency slot: it keeps its place in that queue
                return
            if at < row[1]:
                await c.execute("UPDATE jobs SET available_at=?, attempt=? WHERE id=?", at, attempt, row[0])
            return
        if slots is True:
            slots = await self._run_slots(c, run_id)
        await flow.insert_job(c, run_id, "", JobKind.CALL.value, None, at, attempt,
                              slots if not isinstance(slots, bool) else None, now, hold)

    async def _insert_span(self, c: Conn, span: SpanRecord) -> None:
        """Keep a span with its run. (The executor bounds a run's spans: none past MAX_TRACED_STEPS steps, nor
        past MAX_TRACED_ATTEMPTS attempts of one step — no count here, on every settle.)"""
        await c.execute("INSERT INTO spans (run_id, span_id, parent_id, name, start_ms, end_ms, status, attributes) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, span_id) DO NOTHING", span.run_id,
                        span.span_id, span.parent_id, span.name, span.start, span.end, span.status,
                        pack(span.attributes or None))

    async def _call_if_idle(self, c: Conn, run_id: str, now: int) -> None:
        """Call the function again once nothing of the run is pending (all parallel work has settled)."""
        row = await c.fetchrow("SELECT status, slot1, limit1, slot2, limit2, priority_ms FROM runs WHERE id=?", run_id)
        if row is None or RunStatus(row[0]).is_terminal:
            return
        busy = await c.fetchval("SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id=? AND kind != 'run_timeout') OR "
                                "EXISTS (SELECT 1 FROM pauses WHERE run_id=? AND kind != 'cancel')", run_id, run_id)
        if not busy:
            await self._enqueue_call(c, run_id, now, now, 0, flow.as_slots(row[1:]))

    async def _insert_pause(self, c: Conn, pause: NewPause, now: int) -> None:
        pause_id = await c.fetchval("INSERT INTO pauses (run_id, step_id, kind, event_name, expression, child_run_id, "
                                    "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                                    pause.run_id, pause.step_id, pause.kind, pause.event_name, pause.expression,
                                    pause.child_run_id, pause.expires_at)
        if pause.kind == "event" and pause.since is not None and pause.event_name is not None:
            # The window: an event received since the call that reached wait_for_event began is not missed,
            # even though it arrived before this pause existed.
            run_event = await self._run_event(c, pause.run_id)
            for row in await c.fetch("SELECT id, payload, received_at FROM events WHERE name=? AND received_at>=? "
                                     "ORDER BY received_at, id", pause.event_name, pause.since):
                candidate = event_record(row).to_dict()
                if self.hooks.pause_matcher(pause.expression, run_event, candidate):
                    await self._resolve_pause(c, pause_id, pause.run_id, pause.step_id, {"data": candidate}, None,
                                              now)
                    return
        if pause.kind == "invoke" and pause.child_run_id is not None:
            child = await c.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", pause.child_run_id)
            if child is not None and RunStatus(child[5]).is_terminal:
                await self._resolve_invoke(c, pause_id, pause.run_id, pause.step_id, run_record(child), now)

    async def _run_event(self, c: Conn, run_id: str) -> dict[str, Any]:
        payload = await c.fetchval("SELECT e.payload FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id=?",
                                   run_id)
        return codec.unpack(bytes(payload)) if payload is not None else {}

    async def _match_pauses(self, c: Conn, ev: EventRecord) -> bool:
        """Resolve the waits (and cancel the runs) this event matches; True if it created work."""
        rows = await c.fetch(f"SELECT {PAUSE_COLUMNS} FROM pauses WHERE event_name=? ORDER BY id", ev.name)
        candidate = ev.to_dict()
        matched = False
        for row in rows:
            pause = Pause(*row)
            if pause.kind == "cancel" and pause.expires_at is not None and pause.expires_at < ev.received_at:
                continue  # a cancel_on with a timeout listens only that long
            if not self.hooks.pause_matcher(pause.expression, await self._run_event(c, pause.run_id), candidate):
                continue
            await self._lock_run(c, pause.run_id)
            matched = True
            if pause.kind == "cancel":
                await self._finish_run(c, pause.run_id, RunStatus.CANCELLED, None, {
                    "code": "cancelled", "message": f"cancelled by event {ev.name} ({ev.id})"}, ev.received_at)
            else:
                await self._resolve_pause(c, pause.id, pause.run_id, pause.step_id, {"data": candidate}, None,
                                          ev.received_at)
        return matched

    async def _resolve_pause(self, c: Conn, pause_id: int, run_id: str, step_id: str, memo: dict[str, Any] | None,
                             error: dict[str, Any] | None, now: int) -> None:
        if await c.execute("DELETE FROM pauses WHERE id=?", pause_id) == 0:
            return
        await c.execute("DELETE FROM jobs WHERE run_id=? AND step_id=? AND kind='timeout'", run_id, step_id)
        await self._write_step(c, run_id, StepWrite(step_id=step_id,
                                                    status=StepStatus.FAILED if error else StepStatus.COMPLETED,
                                                    output=memo, error=error, ended_at=now))
        await self._call_if_idle(c, run_id, now)

    async def _resolve_invoke(self, c: Conn, pause_id: int, run_id: str, step_id: str, child: RunRecord,
                              now: int) -> None:
        await self._lock_run(c, run_id)
        if child.status is RunStatus.COMPLETED:
            await self._resolve_pause(c, pause_id, run_id, step_id, {"data": child.output}, None, now)
        else:
            detail = (child.error or {}).get("message", "") if isinstance(child.error, dict) else ""
            error = {"name": "InvokedRunFailed", "code": "invoked_run_failed", "child_run_id": child.id,
                     "message": f"invoked function {child.function_id} run {child.id} ended "
                                f"{child.status.v1_name}" + (f": {detail}" if detail else "")}
            await self._resolve_pause(c, pause_id, run_id, step_id, None, error, now)

    async def _load_run_state(self, c: Conn, run_id: str) -> RunState | None:
        row = await c.fetchrow(f"SELECT {RUN_COLUMNS}, slot1, limit1, slot2, limit2, priority_ms, batched FROM runs "
                               "WHERE id=?", run_id)
        if row is None:
            return None
        run = run_record(row)
        event = None
        events = None
        if row[-1]:  # a batch run: its events in the order they came, the first one its `event`
            rows = await c.fetch("SELECT e.payload FROM run_events b JOIN events e ON e.id = b.event_id WHERE "
                                 "b.run_id=? ORDER BY b.seq", run_id)
            events = [codec.unpack(bytes(r[0])) for r in rows]
            event = events[0] if events else None
        elif run.event_id is not None:
            payload = await c.fetchval("SELECT payload FROM events WHERE id=?", run.event_id)
            event = codec.unpack(bytes(payload)) if payload is not None else None
        rows = await c.fetch(f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id=?", run_id)
        steps = {r[1]: step_record(r) for r in rows}
        jobs = await c.fetch("SELECT step_id FROM jobs WHERE run_id=? AND kind != 'run_timeout'", run_id)
        pauses = await c.fetch("SELECT step_id FROM pauses WHERE run_id=? AND kind != 'cancel'", run_id)
        busy = frozenset(row[0] for row in (*jobs, *pauses) if row[0])
        return RunState(run=run, event=event, steps=steps, pending_jobs=len(jobs), pending_pauses=len(pauses),
                        busy_steps=busy, events=events, slots=flow.as_slots(row[-6:-1]))

    async def _finish_run(self, c: Conn, run_id: str, status: RunStatus, output: Any, error: dict[str, Any] | None,
                          now: int) -> bool:
        """End a run: no more work for it; a step executing right now may finish and be recorded. False if it had
        ended already (it stays as it was)."""
        ended = await c.fetchrow(f"UPDATE runs SET status=?, ended_at=?, output=?, error=? WHERE id=? AND status NOT "
                                 f"IN {TERMINAL_SQL} RETURNING slot1, limit1, slot2, limit2, singleton_key, "
                                 "function_id, created_at", status.value, now, pack(output), pack(error), run_id)
        if ended is None:
            return False
        self.hooks.run_finished(ended[5], status.v1_name, now - int(ended[6]))
        await c.execute("DELETE FROM jobs WHERE run_id=?", run_id)
        await c.execute("DELETE FROM pauses WHERE run_id=?", run_id)
        for slot, limit in flow.slots_of((ended[0], ended[1], ended[2], ended[3], 0)):
            await flow.wake(c, slot, limit, now)  # what it held, or was about to, is free for the next
        if ended[4] is not None:
            await c.execute("DELETE FROM singletons WHERE function_id=? AND key=? AND run_id=?", ended[5], ended[4],
                            run_id)
        # (a debounce or batch row of an ended run is left: the next event finds its run no longer queued and
        # replaces it — no statement here on every run's end for the few runs that have one)
        await c.execute("UPDATE steps SET status='cancelled', ended_at=? WHERE run_id=? AND status='scheduled'",
                        now, run_id)
        self.hooks.run_ended(run_id)
        # runs that invoked this one continue with its output (or its failure)
        waiting = await c.fetch("SELECT id, run_id, step_id FROM pauses WHERE kind='invoke' AND child_run_id=?", run_id)
        if waiting:
            child = run_record(await c.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", run_id))  # type: ignore[arg-type]
            for pause_id, parent_id, step_id in waiting:
                await self._resolve_invoke(c, pause_id, parent_id, step_id, child, now)
            await self._work_added(c)
        return True

    async def _write_step(self, c: Conn, run_id: str, w: StepWrite) -> None:
        seq = 0
        if w.status in (StepStatus.COMPLETED, StepStatus.FAILED):
            seq = await c.fetchval("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE run_id=?", run_id)
        await c.execute(
            "INSERT INTO steps (run_id, step_id, status, attempts, scheduled_at, ended_at, output, error, seq, "
            "name, kind, logs) VALUES (?, ?, ?, COALESCE(?, 0), ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) "
            "DO UPDATE SET status=excluded.status, attempts=COALESCE(?, steps.attempts), "
            "scheduled_at=COALESCE(excluded.scheduled_at, steps.scheduled_at), "
            "ended_at=COALESCE(excluded.ended_at, steps.ended_at), "
            "output=COALESCE(excluded.output, steps.output), error=excluded.error, "
            "seq=CASE WHEN excluded.seq > 0 THEN excluded.seq ELSE steps.seq END, "
            "name=COALESCE(excluded.name, steps.name), kind=COALESCE(excluded.kind, steps.kind), "
            "logs=COALESCE(excluded.logs, steps.logs)",
            run_id, w.step_id, w.status.value, w.attempts, w.scheduled_at, w.ended_at, pack(w.output),
            pack(w.error), seq, w.name, w.kind, w.logs, w.attempts)

    async def _fail_if_stalled(self, c: Conn, job: Job, now: int) -> None:
        """The invariant that no run hangs silently, checked in the transaction that settles each job: after
        it, a run that has not ended has something queued, leased, sleeping or waiting. A run left with
        nothing would stay Running for ever; it fails instead, with an error saying so. (The decisions name
        their own errors, e.g. an unknown op; this is the net under every path, including future ones.)"""
        status = await c.fetchval("SELECT status FROM runs WHERE id=?", job.run_id)
        if status is None or RunStatus(status).is_terminal:
            return
        busy = await c.fetchval("SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id=? AND kind != 'run_timeout') OR "
                                "EXISTS (SELECT 1 FROM pauses WHERE run_id=? AND kind != 'cancel')",
                                job.run_id, job.run_id)
        if busy:
            return
        what = f"its {job.kind.value} job" + (f" for step {job.step_id!r}" if job.step_id else "")
        await self._finish_run(c, job.run_id, RunStatus.FAILED, None, {
            "code": "no_progress", "name": "NoProgress",
            "message": f"the run had nothing scheduled, running, sleeping or waiting after {what} was settled, "
                       "yet it had not finished; it is failed rather than left Running for ever. This is a bug: "
                       "the answer that led here is recorded with the run's steps"}, now)

    async def _advance(self, c: Conn, run_id: str, advance: AdvanceRun, now: int) -> bool:
        """Apply the decision; True when it certainly leaves the run ended or with something pending (it finished
        the run, queued work or a wait, or asked for a call when idle), so the no-progress check can be spared."""
        state = await self._load_run_state(c, run_id)
        if state is None:
            raise StoreError(f"run {run_id} vanished while it was being advanced")
        decision = advance(state)
        for write in decision.steps:
            await self._write_step(c, run_id, write)
        for step_id, reason in decision.skipped.items():
            await self._write_step(c, run_id, StepWrite(step_id=step_id, status=StepStatus.SKIPPED, error=reason,
                                                        ended_at=now))
        for step_id in decision.remove_pauses:
            await c.execute("DELETE FROM pauses WHERE run_id=? AND step_id=?", run_id, step_id)
        for new_event in decision.events:
            await self._insert_new_event(c, new_event)
        await self._insert_jobs(c, run_id, decision.jobs, now, slots=state.slots)
        for pause in decision.pauses:
            await self._insert_pause(c, pause, now)
        for span in decision.spans:
            await self._insert_span(c, span)
        if decision.finish is not None:
            await self._finish_run(c, run_id, decision.finish, decision.output, decision.error, now)
        elif decision.call_when_idle:
            await self._call_if_idle(c, run_id, now)
        if decision.jobs or decision.events or decision.call_when_idle:
            await self._work_added(c)
        return bool(decision.finish is not None or decision.jobs or decision.pauses or decision.call_when_idle)
