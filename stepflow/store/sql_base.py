"""What happens inside a store transaction, written once for every SQL backend: inserting events, runs, jobs
and pauses, resolving waits, ending runs, writing steps, applying a decision and checking that it left the
run with something to do. `SqlStore` (store/sql.py) builds each public operation from these in one
transaction; the backends (sqlite.py, postgres.py) provide the connection, the transaction and the locks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from stepflow import codec
from stepflow.errors import StoreError
from stepflow.store.base import AdvanceRun, Store, StoreHooks
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
    RunState,
    RunStatus,
    StepRecord,
    StepStatus,
    StepWrite,
)

RUN_COLUMNS = ("id, function_id, function_version, app_id, event_id, status, created_at, started_at, "
               "ended_at, output, error, original_run_id")
STEP_COLUMNS = ("run_id, step_id, status, attempts, scheduled_at, started_at, ended_at, output, error, seq, "
                "logs, name, kind")
PAUSE_COLUMNS = "id, run_id, step_id, kind, event_name, expression, child_run_id, expires_at"
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
EVENT_DEDUP_WINDOW_MS = 24 * 3600 * 1000
PARKED = 2**62  # the available_at of a paused run's job, set aside (its due time kept in parked_at) until resumed
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
                     output=codec.unpack(row[9]), error=codec.unpack(row[10]), original_run_id=row[11])


def step_record(row: Row) -> StepRecord:
    return StepRecord(run_id=row[0], step_id=row[1], status=StepStatus(row[2]), attempts=row[3],
                      scheduled_at=row[4], started_at=row[5], ended_at=row[6], output=codec.unpack(row[7]),
                      error=codec.unpack(row[8]), seq=row[9], logs=row[10], name=row[11], kind=row[12])


def event_record(row: Row) -> EventRecord:
    payload = codec.unpack(row[1])
    return EventRecord(id=row[0], name=payload["name"], data=payload["data"], ts=payload["ts"],
                       received_at=row[2], user=payload.get("user"), v=payload.get("v"))


def pack(value: Any) -> bytes | None:
    return codec.pack(value) if value is not None else None


class SqlBase(Store):
    """The transaction-internal writes. Backends provide `open`, `close`, `_transaction`, `_read`, `_lock_run` and
    `skip_locked`."""

    url: str
    skip_locked = ""  # appended to the claim's row selection where the backend supports it

    def __init__(self) -> None:
        self.hooks = StoreHooks()  # until the engine attaches its own

    async def _transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError  # pragma: no cover - every backend overrides it

    async def _read(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError  # pragma: no cover

    async def _lock_run(self, c: Conn, run_id: str) -> None:
        """Serialize decisions about one run (a no-op where transactions are serial already)."""

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
        if run.status is RunStatus.QUEUED and await c.fetchval(
                "SELECT 1 FROM paused_functions WHERE function_id=?", run.function_id) is not None:
            run.status = RunStatus.PAUSED  # stored, nothing executed until the function is resumed
        start_deadline = now + run.start_timeout_ms if run.start_timeout_ms is not None else None
        await c.execute(f"INSERT INTO runs ({RUN_COLUMNS}, finish_timeout_ms, start_deadline, operation_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, ?, ?, ?, ?)",
                        run.run_id, run.function_id, run.function_version, run.app_id, event_id, run.status.value,
                        now, run.original_run_id, run.finish_timeout_ms, start_deadline, run.operation_id)
        for kept in run.steps:  # a rerun from a step: the results it keeps, in their recorded order
            await self._write_step(c, run.run_id, kept)
        await self._insert_jobs(c, run.run_id, run.jobs)
        if run.start_timeout_ms is not None:
            await self._insert_jobs(c, run.run_id, [NewJob("", now + run.start_timeout_ms, JobKind.RUN_TIMEOUT,
                                                           {"which": "start"}, step_row=False)])
        for pause in run.pauses:
            await self._insert_pause(c, pause, now)
        return True

    async def _insert_jobs(self, c: Conn, run_id: str, jobs: list[NewJob]) -> None:
        for job in jobs:
            if job.kind is JobKind.CALL and not job.payload:
                await self._enqueue_call(c, run_id, job.available_at, job.attempt)
                continue
            await c.execute("INSERT INTO jobs (run_id, step_id, kind, payload, available_at, attempt) "
                            "VALUES (?, ?, ?, ?, ?, ?)", run_id, job.step_id, job.kind.value, pack(job.payload),
                            job.available_at, job.attempt)
            if job.step_row:
                await c.execute("INSERT INTO steps (run_id, step_id, status, scheduled_at, name, kind) "
                                "VALUES (?, ?, 'scheduled', ?, ?, ?) ON CONFLICT (run_id, step_id) DO UPDATE SET "
                                "status='scheduled', scheduled_at=excluded.scheduled_at",
                                run_id, job.step_id, job.available_at, job.name, job.step_kind)

    async def _enqueue_call(self, c: Conn, run_id: str, at: int, attempt: int = 0) -> None:
        """At most one waiting (unleased) untargeted call per run: calling twice would replay twice."""
        row = await c.fetchrow("SELECT id, available_at FROM jobs WHERE run_id=? AND kind='call' AND payload IS NULL "
                               "AND lease_owner IS NULL", run_id)
        if row is not None:
            if at < row[1]:
                await c.execute("UPDATE jobs SET available_at=?, attempt=? WHERE id=?", at, attempt, row[0])
            return
        await c.execute("INSERT INTO jobs (run_id, step_id, kind, available_at, attempt) VALUES (?, '', 'call', ?, ?)",
                        run_id, at, attempt)

    async def _call_if_idle(self, c: Conn, run_id: str, now: int) -> None:
        """Call the function again once nothing of the run is pending (all parallel work has settled)."""
        status = await c.fetchval("SELECT status FROM runs WHERE id=?", run_id)
        if status is None or RunStatus(status).is_terminal:
            return
        busy = await c.fetchval("SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id=? AND kind != 'run_timeout') OR "
                                "EXISTS (SELECT 1 FROM pauses WHERE run_id=? AND kind != 'cancel')", run_id, run_id)
        if not busy:
            await self._enqueue_call(c, run_id, now)

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
        row = await c.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", run_id)
        if row is None:
            return None
        run = run_record(row)
        event = None
        if run.event_id is not None:
            payload = await c.fetchval("SELECT payload FROM events WHERE id=?", run.event_id)
            event = codec.unpack(bytes(payload)) if payload is not None else None
        rows = await c.fetch(f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id=?", run_id)
        steps = {r[1]: step_record(r) for r in rows}
        jobs = await c.fetch("SELECT step_id FROM jobs WHERE run_id=? AND kind != 'run_timeout'", run_id)
        pauses = await c.fetch("SELECT step_id FROM pauses WHERE run_id=? AND kind != 'cancel'", run_id)
        busy = frozenset(row[0] for row in (*jobs, *pauses) if row[0])
        return RunState(run=run, event=event, steps=steps, pending_jobs=len(jobs), pending_pauses=len(pauses),
                        busy_steps=busy)

    async def _finish_run(self, c: Conn, run_id: str, status: RunStatus, output: Any, error: dict[str, Any] | None,
                          now: int) -> bool:
        """End a run: no more work for it; a step executing right now may finish and be recorded. False if it had
        ended already (it stays as it was)."""
        if await c.execute(f"UPDATE runs SET status=?, ended_at=?, output=?, error=? WHERE id=? AND status NOT IN "
                           f"{TERMINAL_SQL}", status.value, now, pack(output), pack(error), run_id) == 0:
            return False
        await c.execute("DELETE FROM jobs WHERE run_id=?", run_id)
        await c.execute("DELETE FROM pauses WHERE run_id=?", run_id)
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
            "name, kind) VALUES (?, ?, ?, COALESCE(?, 0), ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO "
            "UPDATE SET status=excluded.status, attempts=COALESCE(?, steps.attempts), "
            "scheduled_at=COALESCE(excluded.scheduled_at, steps.scheduled_at), "
            "ended_at=COALESCE(excluded.ended_at, steps.ended_at), "
            "output=COALESCE(excluded.output, steps.output), error=excluded.error, "
            "seq=CASE WHEN excluded.seq > 0 THEN excluded.seq ELSE steps.seq END, "
            "name=COALESCE(excluded.name, steps.name), kind=COALESCE(excluded.kind, steps.kind)",
            run_id, w.step_id, w.status.value, w.attempts, w.scheduled_at, w.ended_at, pack(w.output),
            pack(w.error), seq, w.name, w.kind, w.attempts)

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
        await self._insert_jobs(c, run_id, decision.jobs)
        for pause in decision.pauses:
            await self._insert_pause(c, pause, now)
        if decision.finish is not None:
            await self._finish_run(c, run_id, decision.finish, decision.output, decision.error, now)
        elif decision.call_when_idle:
            await self._call_if_idle(c, run_id, now)
        if decision.jobs or decision.events or decision.call_when_idle:
            await self._work_added(c)
        return bool(decision.finish is not None or decision.jobs or decision.pauses or decision.call_when_idle)
