"""The store's logic, once, for every SQL backend (SQLite embedded, PostgreSQL scale-out).

Each write operation is one transaction: `self._transaction(body)` runs `body(conn)` inside one, and a
backend may run it again after a serialization failure or deadlock (bodies only read and write the database
and call pure callbacks, so a retry is safe). Every operation that decides something from a run's state
first locks that run's row (`_lock_run`), so two workers settling steps of one run take turns and each
sees the other's result.

SQL is written once with `?` placeholders and portable syntax (ON CONFLICT, RETURNING); the backend adapts
placeholders and adds what only it has (`FOR UPDATE SKIP LOCKED`, row locks, LISTEN/NOTIFY).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepflow import codec
from stepflow.ids import ulid_floor
from stepflow.store import flow
from stepflow.store.base import AdvanceRun, PlanRuns
from stepflow.store.records import (
    EventRecord,
    Job,
    JobKind,
    NewEvent,
    NewJob,
    NewRun,
    RunRecord,
    RunState,
    RunStatus,
    SpanRecord,
    StepRecord,
    StepStatus,
    StepUpdate,
)
from stepflow.store.sql_base import (
    EVENT_DEDUP_WINDOW_MS,
    IDEMPOTENCY_TTL_MS,
    PARKED,
    RUN_COLUMNS,
    STEP_COLUMNS,
    TERMINAL_SQL,
    Conn,
    Row,
    event_record,
    pack,
    run_record,
    span_row,
    step_record,
)
from stepflow.store.sql_operations import SqlFunctionPauses

__all__ = ["EVENT_DEDUP_WINDOW_MS", "IDEMPOTENCY_TTL_MS", "Conn", "Row", "SqlStore"]


class SqlStore(SqlFunctionPauses):
    """The store's operations, each one transaction built from SqlBase's writes."""

    async def save_function(self, function_id: str, app_id: str, config: dict[str, Any], now: int = 0) -> int:
        blob = codec.pack(config)

        async def body(c: Conn) -> int:
            row = await c.fetchrow("SELECT version, config FROM functions WHERE id=? ORDER BY version DESC LIMIT 1",
                                   function_id)
            if row and bytes(row[1]) == blob:
                await c.execute("UPDATE functions SET active=1 WHERE id=? AND version=?", function_id, row[0])
                return int(row[0])
            version = int(row[0]) + 1 if row else 1
            await c.execute("UPDATE functions SET active=0 WHERE id=?", function_id)
            await c.execute("INSERT INTO functions (id, version, app_id, config, created_at, active) "
                            "VALUES (?, ?, ?, ?, ?, 1)", function_id, version, app_id, blob, now)
            return version

        return await self._transaction(body)

    async def get_function(self, function_id: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        async def body(c: Conn) -> Row | None:
            if version is None:
                return await c.fetchrow("SELECT version, config FROM functions WHERE id=? ORDER BY version DESC "
                                        "LIMIT 1", function_id)
            return await c.fetchrow("SELECT version, config FROM functions WHERE id=? AND version=?",
                                    function_id, version)

        row = await self._read(body)
        return (int(row[0]), codec.unpack(bytes(row[1]))) if row else None

    async def list_functions(self) -> list[tuple[int, dict[str, Any]]]:
        rows = await self._read(lambda c: c.fetch("SELECT version, config FROM functions WHERE active=1 ORDER BY id"))
        return [(int(r[0]), codec.unpack(bytes(r[1]))) for r in rows]

    async def remove_function(self, function_id: str) -> None:
        async def body(c: Conn) -> None:
            await c.execute("UPDATE functions SET active=0 WHERE id=?", function_id)

        await self._transaction(body)

    async def ingest_events(self, events: list[EventRecord], plan: PlanRuns) -> list[str]:
        async def body(c: Conn) -> list[str]:
            ids: list[str] = []
            added = False
            for ev in events:
                ids.append(ev.id)
                if await self._insert_event(c, ev):
                    for run in plan(ev):
                        added |= await self._insert_run(c, run, ev.id, ev.received_at)
                    added |= await self._match_pauses(c, ev)
            if added:
                await self._work_added(c)
            return ids

        return await self._transaction(body)

    async def fire_cron(self, function_id: str, tick_at: int, new_event: NewEvent) -> bool:
        """Start the runs of one cron tick, exactly once however many processes try."""
        async def body(c: Conn) -> bool:
            if await c.execute("INSERT INTO cron_ticks (function_id, tick_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                               function_id, tick_at) == 0:
                return False
            await self._insert_new_event(c, new_event)
            await self._work_added(c)
            return True

        return await self._transaction(body)

    async def get_event(self, event_id: str) -> EventRecord | None:
        row = await self._read(lambda c: c.fetchrow("SELECT id, payload, received_at FROM events WHERE id=?",
                                                    event_id))
        return event_record(row) if row else None

    async def get_events(self, event_ids: Sequence[str]) -> dict[str, EventRecord]:
        unique = list(dict.fromkeys(event_ids))
        if not unique:
            return {}
        sql = "SELECT id, payload, received_at FROM events WHERE id IN (" + ", ".join("?" * len(unique)) + ")"
        return {e.id: e for e in map(event_record, await self._read(lambda c: c.fetch(sql, *unique)))}

    async def get_traces(self, run_ids: Sequence[str]) -> list[tuple[RunRecord, list[SpanRecord]]]:
        """Several runs with their spans, in three statements whatever their number (the OTLP export's read)."""
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))

        async def read(c: Conn) -> list[tuple[RunRecord, list[SpanRecord]]]:
            runs = [run_record(r) for r in await c.fetch(f"SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({marks})",
                                                          *ids)]
            spans: dict[str, list[SpanRecord]] = {run.id: [] for run in runs}
            for r in await c.fetch("SELECT run_id, span_id, parent_id, name, start_ms, end_ms, status, attributes "
                                   f"FROM spans WHERE run_id IN ({marks})", *ids):
                spans[r[0]].append(SpanRecord(run_id=r[0], span_id=r[1], parent_id=r[2], name=r[3],
                                              start=int(r[4]), end=int(r[5]) if r[5] is not None else None,
                                              status=r[6], attributes=codec.unpack(r[7]) or {}))
            for run_id, kept in await c.fetch(f"SELECT run_id, span FROM steps WHERE run_id IN ({marks}) AND span "
                                              "IS NOT NULL", *ids):
                spans[run_id].append(_step_span(run_id, kept))
            return [(run, spans[run.id]) for run in runs]

        return await self._read(read)

    async def get_run_spans(self, run_id: str) -> list[SpanRecord]:
        traces = await self.get_traces([run_id])
        spans = traces[0][1] if traces else []
        return sorted(spans, key=lambda s: (s.start, s.end or s.start, s.span_id))

    async def get_event_skips(self, event_id: str) -> list[dict[str, Any]]:
        rows = await self._read(lambda c: c.fetch("SELECT function_id, reason, message, at FROM skips WHERE "
                                                  "event_id=? ORDER BY function_id", event_id))
        return [{"function_id": r[0], "reason": r[1], "message": r[2], "at": int(r[3])} for r in rows]

    async def get_event_runs(self, event_id: str) -> list[RunRecord]:
        # the runs it triggered, and the batch runs it joined
        rows = await self._read(lambda c: c.fetch(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE event_id=? UNION SELECT {RUN_COLUMNS} FROM runs WHERE id IN "
            "(SELECT run_id FROM run_events WHERE event_id=?) ORDER BY 1", event_id, event_id))
        return [run_record(r) for r in rows]

    async def get_run(self, run_id: str) -> RunRecord | None:
        row = await self._read(lambda c: c.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", run_id))
        return run_record(row) if row else None

    async def get_run_steps(self, run_id: str) -> list[StepRecord]:
        rows = await self._read(lambda c: c.fetch(
            f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id=? ORDER BY CASE WHEN seq > 0 THEN seq ELSE 1000000 END, "
            "COALESCE(started_at, scheduled_at, ended_at), step_id", run_id))
        return [step_record(r) for r in rows]

    async def list_events(self, *, name: str | None = None, received_after: int | None = None,
                          received_before: int | None = None, cursor: str | None = None,
                          limit: int = 50) -> list[EventRecord] | None:
        async def read(c: Conn) -> list[EventRecord] | None:
            where: list[str] = []
            args: list[Any] = []
            for clause, value in (("name=?", name), ("received_at>=?", received_after),
                                  ("received_at<?", received_before)):
                if value is not None:
                    where.append(clause)
                    args.append(value)
            if cursor is not None:  # keyset paging on (received_at, id): event ids are the senders', not ordered
                after = await c.fetchval("SELECT received_at FROM events WHERE id=?", cursor)
                if after is None:
                    return None
                where.append("(received_at<? OR (received_at=? AND id<?))")
                args += [after, after, cursor]
            sql = ("SELECT id, payload, received_at FROM events" + (" WHERE " + " AND ".join(where) if where else "")
                   + " ORDER BY received_at DESC, id DESC LIMIT ?")
            return [event_record(r) for r in await c.fetch(sql, *args, limit)]

        return await self._read(read)

    async def list_runs(self, *, status: RunStatus | None = None, function_id: str | None = None,
                        event_name: str | None = None, original_run_id: str | None = None,
                        created_from: int | None = None, created_until: int | None = None,
                        cursor: str | None = None, limit: int = 50) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("r.status=?", status.value if status else None), ("r.function_id=?", function_id),
                              ("r.original_run_id=?", original_run_id), ("e.name=?", event_name),
                              # run ids are ULIDs of their creation: a time range is an id range (primary key)
                              ("r.id>=?", ulid_floor(created_from) if created_from is not None else None),
                              ("r.id<?", ulid_floor(created_until) if created_until is not None else None),
                              ("r.id<?", cursor)):
            if value is not None:
                where.append(clause)
                args.append(value)
        columns = ", ".join("r." + column.strip() for column in RUN_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM runs r"
        if event_name is not None:
            # CROSS JOIN: SQLite then walks runs newest first (the order asked) and looks each event up, instead
            # of gathering every event of the name and sorting (57 ms for a first page at 100k runs, vs <1 ms);
            # PostgreSQL plans it as any inner join
            sql += " CROSS JOIN events e"
            where.insert(0, "e.id = r.event_id")
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY r.id DESC LIMIT ?"
        rows = await self._read(lambda c: c.fetch(sql, *args, limit))
        return [run_record(r) for r in rows]

    async def next_due_at(self) -> int | None:
        value = await self._read(lambda c: c.fetchval("SELECT MIN(available_at) FROM jobs WHERE available_at<?",
                                                      PARKED))
        return int(value) if value is not None else None

    async def load_run_state(self, run_id: str) -> RunState | None:
        return await self._read(lambda c: self._load_run_state(c, run_id))

    async def cancel_run(self, run_id: str, now: int) -> RunRecord | None:
        async def body(c: Conn) -> RunRecord | None:
            await self._lock_run(c, run_id)
            if await c.fetchval("SELECT 1 FROM runs WHERE id=?", run_id) is None:
                return None
            await self._finish_run(c, run_id, RunStatus.CANCELLED, None, None, now)
            row = await c.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", run_id)
            return run_record(row) if row else None

        return await self._transaction(body)

    async def claim_jobs(self, worker_id: str, limit: int, lease_ms: int, now: int) -> list[Job]:
        async def body(c: Conn) -> list[Job]:
            # An untargeted call is never claimed while another call of the same run is executing: two
            # concurrent replays of one function would both run its next step. A job still leased here has
            # an expired lease: its worker died mid-attempt, which counts as an attempt.
            rows = await c.fetch(
                "UPDATE jobs SET attempt=attempt + CASE WHEN lease_owner IS NULL THEN 0 ELSE 1 END, lease_owner=?, "
                "reclaimed=CASE WHEN lease_owner IS NULL THEN 0 ELSE 1 END, available_at=?, token=token+1 WHERE id IN "
                "(SELECT j.id FROM jobs j WHERE j.available_at<=? AND NOT (j.kind='call' AND j.payload IS NULL "
                " AND EXISTS (SELECT 1 FROM jobs k WHERE k.run_id=j.run_id AND k.kind='call' AND k.payload IS "
                " NULL AND k.lease_owner IS NOT NULL AND k.id != j.id)) ORDER BY j.available_at "
                f"LIMIT ?{self.skip_locked}) "
                "RETURNING id, run_id, step_id, token, attempt, kind, payload, slot1, limit1, slot2, limit2, hold, "
                "reclaimed",
                worker_id, now + lease_ms, now, limit)
            room = await self._slot_room(c, rows, now)
            jobs: list[Job] = []
            for job_id, run_id, step_id, token, attempt, kind, payload, *job_flow in rows:
                run = await c.fetchrow("SELECT function_id, function_version, app_id, status, finish_timeout_ms, "
                                       "start_deadline, created_at FROM runs WHERE id=?", run_id)
                if run is None or RunStatus(run[3]).is_terminal:
                    await c.execute("DELETE FROM jobs WHERE id=?", job_id)  # orphan of an ended run
                    continue
                if run[3] == "PAUSED":  # its function is paused: set the job aside until it is resumed
                    await c.execute("UPDATE jobs SET lease_owner=NULL, available_at=?, parked_at=? WHERE id=?",
                                    PARKED, now, job_id)
                    continue
                job_kind = JobKind(kind)
                job_payload = codec.unpack(bytes(payload)) if payload is not None else None
                # The start timeout, in one place: a run still queued at its deadline is cancelled when its
                # timer comes due or when any of its jobs is claimed after it, whichever is first.
                start_timer = job_kind is JobKind.RUN_TIMEOUT and (job_payload or {}).get("which") == "start"
                late = run[3] == "QUEUED" and run[5] is not None and now >= run[5]
                if late and (start_timer or now > run[5]):
                    await self._lock_run(c, run_id)
                    await self._finish_run(c, run_id, RunStatus.CANCELLED, None, {
                        "code": "start_timeout", "message": "cancelled: the run did not start within its start "
                        f"timeout ({(run[5] - run[6]) / 1000:g}s)"}, now)
                    continue
                if start_timer:
                    await c.execute("DELETE FROM jobs WHERE id=?", job_id)  # the run started in time
                    continue
                slots = flow.slots_of((job_flow[0], job_flow[1], job_flow[2], job_flow[3], 0))
                full = next((slot for slot, _ in slots if room[slot] <= 0), None)
                if full is not None:  # the slot filled up since this job became due: it waits its turn
                    await flow.park(c, job_id, full)
                    continue
                for slot, _ in slots:
                    room[slot] -= 1
                started = False
                if run[3] == "QUEUED" and job_kind in (JobKind.STEP, JobKind.CALL):
                    if job_flow[4] in ("debounce", "batch"):  # it starts: later events make a new run
                        await c.execute(f"DELETE FROM {'debounces' if job_flow[4] == 'debounce' else 'batches'} "
                                        "WHERE run_id=?", run_id)
                    started = await c.execute("UPDATE runs SET status='RUNNING', started_at=? WHERE id=? AND "
                                              "status='QUEUED'", now, run_id) == 1
                    if started and run[4] is not None:
                        await self._insert_jobs(c, run_id, [NewJob("", now + run[4], JobKind.RUN_TIMEOUT,
                                                                   {"which": "finish"}, step_row=False)], now)
                target = step_id if job_kind is JobKind.STEP else (job_payload or {}).get("target")
                if target:
                    await c.execute("UPDATE steps SET status='running', attempts=?, started_at=COALESCE(started_at, ?) "
                                    "WHERE run_id=? AND step_id=?", attempt + 1, now, run_id, target)
                jobs.append(Job(id=job_id, run_id=run_id, step_id=step_id, token=token, function_id=run[0],
                                function_version=run[1], app_id=run[2], attempt=attempt, kind=job_kind,
                                payload=job_payload, slots=tuple(slots), lease_expired=bool(job_flow[5]),
                                started_run=started))
            return jobs

        return await self._transaction(body)

    async def _slot_room(self, c: Conn, rows: Sequence[Sequence[Any]], now: int) -> dict[str, int]:
        """How many more of the claimed jobs each concurrency slot they need can take: its limit, less the steps
        executing besides this claim's. Each slot is locked first (in name order: no deadlock between claims)."""
        limits: dict[str, int] = {}
        mine: dict[str, int] = {}
        for row in rows:
            for slot, limit in flow.slots_of((row[7], row[8], row[9], row[10], 0)):
                limits[slot] = limit
                mine[slot] = mine.get(slot, 0) + 1
        if not limits:
            return {}
        slots = sorted(limits)
        await self._lock_keys(c, [f"c:{slot}" for slot in slots])
        executing = await flow.executing_many(c, slots, now)
        return {slot: limits[slot] - (executing[slot] - mine[slot]) for slot in slots}

    async def run_waiting(self, run_id: str, now: int) -> dict[str, dict[str, Any]]:
        return await self._read(lambda c: flow.waiting_reasons(c, run_id, now))

    async def queue_stats(self, now: int) -> dict[str, Any]:
        async def read(c: Conn) -> dict[str, Any]:
            row = await c.fetchrow(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE available_at<=? AND lease_owner IS NULL), "
                "(SELECT COUNT(*) FROM jobs WHERE lease_owner IS NOT NULL AND available_at>?), "
                "(SELECT MIN(available_at) FROM jobs WHERE available_at<=? AND lease_owner IS NULL), "
                "(SELECT COUNT(*) FROM jobs WHERE waiting_on IS NOT NULL)", now, now, now)
            held = await c.fetch("SELECT hold, COUNT(*) FROM jobs WHERE hold IS NOT NULL AND available_at>? AND "
                                 "lease_owner IS NULL GROUP BY hold", now)
            waiting = {"concurrency": int(row[3])} if row else {}
            waiting.update({str(h): int(n) for h, n in held})
            return {"due": int(row[0]) if row else 0, "executing": int(row[1]) if row else 0,
                    "oldest_due_age_ms": max(0, now - int(row[2])) if row and row[2] is not None else 0,
                    "waiting": waiting}

        return await self._read(read)

    async def wake_waiting(self, now: int) -> int:
        # a read first: an engine with nothing waiting (the usual case) writes nothing
        if await self._read(lambda c: c.fetchval("SELECT 1 FROM jobs WHERE waiting_on IS NOT NULL LIMIT 1")) is None:
            return 0

        async def body(c: Conn) -> int:
            woken = await flow.wake_all(c, now)
            if woken:
                await self._work_added(c)
            return woken

        return await self._transaction(body)

    async def renew_leases(self, worker_id: str, until: int, job_ids: Sequence[int] | None = None) -> int:
        """Extend this worker's leases; with `job_ids`, only those (the jobs it knows it is executing — a
        claim whose answer was lost to a broken connection must not stay leased for ever)."""
        async def body(c: Conn) -> int:
            if job_ids is None:
                return await c.execute("UPDATE jobs SET available_at=? WHERE lease_owner=?", until, worker_id)
            ids = list(job_ids)
            renewed = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                renewed += await c.execute(f"UPDATE jobs SET available_at=? WHERE lease_owner=? AND id IN "
                                           f"({', '.join('?' * len(chunk))})", until, worker_id, *chunk)
            return renewed

        return await self._transaction(body)

    async def release_leases(self, worker_id: str | None, now: int) -> int:
        """worker_id=None: recovery after a crash — every attempt in flight was lost, and counts as one (so a
        step that kills the engine every time cannot loop forever). A worker stopping gracefully releases its
        own jobs without counting: it interrupted them."""
        async def body(c: Conn) -> int:
            if worker_id is None:
                count = await c.execute("UPDATE jobs SET lease_owner=NULL, available_at=?, attempt=attempt+1 "
                                        "WHERE lease_owner IS NOT NULL", now)
            else:
                count = await c.execute("UPDATE jobs SET lease_owner=NULL, available_at=? WHERE lease_owner=?",
                                        now, worker_id)
            # bulk operations too: the next process goes on with them from their saved cursor
            await c.execute("UPDATE operations SET lease_owner=NULL, lease_until=NULL WHERE lease_owner IS NOT NULL"
                            + (" AND lease_owner=?" if worker_id else ""), *([worker_id] if worker_id else []))
            if count:
                await self._work_added(c)
            return count

        return await self._transaction(body)

    async def settle_job(self, job: Job, update: StepUpdate | None, advance: AdvanceRun | None,
                         now: int) -> RunRecord | None:
        async def body(c: Conn) -> RunRecord | None:
            await self._lock_run(c, job.run_id)
            owned = await c.execute("DELETE FROM jobs WHERE id=? AND token=?", job.id, job.token) == 1
            if not owned:
                # Not ours any more. If the run ended (cancelled) while the attempt executed, keep what it
                # produced on the step, for the record, and stop there. Otherwise our lease was lost (this worker
                # stalled past it) and another worker took the step over: its attempt, running or recorded, is
                # the one the run uses, and this late result must not touch the step at all.
                run_ended = await c.fetchval(f"SELECT status IN {TERMINAL_SQL} FROM runs WHERE id=?", job.run_id)
                if update is not None and run_ended:
                    ended = update.status if update.status in (StepStatus.COMPLETED, StepStatus.FAILED) \
                        else StepStatus.CANCELLED
                    await c.execute("UPDATE steps SET status=?, output=?, error=?, ended_at=?, logs=COALESCE(?, logs) "
                                    "WHERE run_id=? AND step_id=? AND status IN ('running', 'cancelled')",
                                    ended.value, pack(update.output), pack(update.error), update.ended_at,
                                    update.logs, job.run_id, job.step_id)
                return None
            if update is not None:
                seq = 0
                if update.status in (StepStatus.COMPLETED, StepStatus.FAILED):
                    seq = await c.fetchval("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE run_id=?", job.run_id)
                # the final attempt's span rides in the step's row (no statement of its own on the hot path)
                await c.execute("UPDATE steps SET status=?, ended_at=?, output=?, error=?, seq=?, "
                                "logs=COALESCE(?, logs), span=? WHERE run_id=? AND step_id=?",
                                update.status.value, update.ended_at, pack(update.output), pack(update.error), seq,
                                update.logs, pack(span_row(update.span)), job.run_id, job.step_id)
            progressed = advance is not None and await self._advance(c, job.run_id, advance, now)
            if job.kind is not JobKind.RUN_TIMEOUT and not progressed:
                await self._fail_if_stalled(c, job, now)
            await self._free_slots(c, job, now)
            row = await c.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", job.run_id)
            return run_record(row) if row else None

        return await self._transaction(body)

    async def advance_run(self, run_id: str, advance: AdvanceRun, now: int) -> RunRecord | None:
        """Apply a decision to a run outside any job (e.g. a durable endpoint's checkpoint), under its lock."""
        async def body(c: Conn) -> RunRecord | None:
            await self._lock_run(c, run_id)
            if await c.fetchval("SELECT 1 FROM runs WHERE id=?", run_id) is None:
                return None
            await self._advance(c, run_id, advance, now)
            row = await c.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", run_id)
            return run_record(row) if row else None

        return await self._transaction(body)

    async def add_run(self, run: NewRun, event_id: str | None, now: int) -> None:
        async def body(c: Conn) -> None:
            await self._insert_run(c, run, event_id, now)
            await self._work_added(c)

        await self._transaction(body)

    async def create_run(self, event: EventRecord, run: NewRun, started_at: int) -> bool:
        """Store an event and a run already executing (a durable endpoint's request). False if it exists."""
        async def body(c: Conn) -> bool:
            if await c.fetchval("SELECT 1 FROM runs WHERE id=?", run.run_id) is not None:
                return False
            await self._insert_event(c, event)
            if not await self._insert_run(c, run, event.id, event.received_at):
                return False
            await c.execute("UPDATE runs SET status='RUNNING', started_at=? WHERE id=?", started_at, run.run_id)
            return True

        return await self._transaction(body)

    async def find_idempotent_run(self, function_id: str, key: str, now: int) -> RunRecord | None:
        row = await self._read(lambda c: c.fetchrow(
            f"SELECT {', '.join('r.' + col.strip() for col in RUN_COLUMNS.split(','))} FROM idempotency i "
            "JOIN runs r ON r.id = i.run_id WHERE i.function_id=? AND i.key=? AND i.expires_at > ?",
            function_id, key, now))
        return run_record(row) if row else None

    async def retry_job(self, job: Job, update: StepUpdate, available_at: int) -> bool:
        async def body(c: Conn) -> bool:
            await self._lock_run(c, job.run_id)
            owned = await c.execute("UPDATE jobs SET available_at=?, attempt=attempt+1, lease_owner=NULL "
                                    "WHERE id=? AND token=?", available_at, job.id, job.token) == 1
            # not ours any more: the run ended meanwhile (the step shows cancelled), or another worker has it —
            # then the step is that worker's, and this late failure leaves it alone
            run_ended = not owned and await c.fetchval(
                f"SELECT status IN {TERMINAL_SQL} FROM runs WHERE id=?", job.run_id)
            if not owned and not run_ended:
                return False
            await c.execute("UPDATE steps SET status=CASE WHEN ? THEN 'scheduled' WHEN ? THEN 'cancelled' ELSE status "
                            "END, ended_at=CASE WHEN ? THEN ? ELSE ended_at END, scheduled_at=?, error=?, "
                            "logs=COALESCE(?, logs) WHERE run_id=? AND step_id=?",
                            owned, bool(run_ended), bool(run_ended), update.ended_at, available_at, pack(update.error),
                            update.logs, job.run_id, job.step_id)
            if owned:
                if update.span is not None:
                    await self._insert_span(c, update.span)
                await self._free_slots(c, job, available_at)
                await self._work_added(c)
            return owned

        return await self._transaction(body)

    async def _free_slots(self, c: Conn, job: Job, now: int) -> None:
        """The job no longer executes: the slots it held can take their next waiters."""
        woken = 0
        for slot, limit in job.slots:
            woken += await flow.wake(c, slot, limit, now)
        if woken:
            await self._work_added(c)


def _step_span(run_id: str, kept: Any) -> SpanRecord:
    """A step attempt's span as kept in its step row."""
    row = codec.unpack(bytes(kept))
    return SpanRecord(run_id=run_id, span_id=row["span_id"], parent_id=row.get("parent_id"), name=row["name"],
                      start=row["start"], end=row.get("end"), status=row.get("status", "ok"),
                      attributes=row.get("attributes") or {})
