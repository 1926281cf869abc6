"""Durable bulk operations in SQL: stored, leased by one process at a time, their progress saved batch by batch
with the cursor, so a process that takes one over (after a crash) goes on where it stopped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepflow import codec
from stepflow.ids import ulid_floor
from stepflow.store.records import EventRecord, NewRun, OperationRecord, OperationStatus, RunStatus
from stepflow.store.sql_base import Conn, Row, SqlBase, event_record

OPERATION_COLUMNS = ("id, kind, function_id, params, status, created_at, total, processed, succeeded, skipped, "
                     "cursor, ended_at")
TERMINAL = tuple(s.value for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED))


def operation_record(row: Row) -> OperationRecord:
    return OperationRecord(id=row[0], kind=row[1], function_id=row[2], params=codec.unpack(row[3]),
                           status=OperationStatus(row[4]), created_at=row[5], total=row[6], processed=row[7],
                           succeeded=row[8], skipped=row[9], cursor=row[10], ended_at=row[11])


def _range(params: dict[str, Any]) -> tuple[str, str]:
    """The run-id range of the operation's time range (run ids are ULIDs of their creation)."""
    return ulid_floor(int(params.get("from") or 0)), ulid_floor(int(params["until"]))


class SqlOperations(SqlBase):
    async def create_operation(self, op: OperationRecord) -> OperationRecord:
        async def body(c: Conn) -> OperationRecord:
            op.total = await self._count_candidates(c, op)
            await c.execute(f"INSERT INTO operations ({OPERATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, 0, "
                            "NULL, NULL)", op.id, op.kind, op.function_id, codec.pack(op.params), op.status.value,
                            op.created_at, op.total)
            await self._work_added(c)
            return op

        return await self._transaction(body)

    async def _count_candidates(self, c: Conn, op: OperationRecord) -> int:
        low, high = _range(op.params)
        if op.kind == "cancel":
            sql, args = ("SELECT COUNT(*) FROM runs WHERE function_id=? AND id>=? AND id<? AND status NOT IN "
                         "(?, ?, ?)", [op.function_id, low, high, *TERMINAL])
        elif op.params.get("statuses"):
            statuses = op.params["statuses"]
            sql, args = ("SELECT COUNT(*) FROM runs WHERE function_id=? AND id>=? AND id<? AND status IN ("
                         + ", ".join("?" * len(statuses)) + ")", [op.function_id, low, high, *statuses])
        else:
            names = op.params.get("names")
            sql = "SELECT COUNT(*) FROM events WHERE received_at>=? AND received_at<?"
            args = [int(op.params.get("from") or 0), int(op.params["until"])]
            if names:
                sql += " AND name IN (" + ", ".join("?" * len(names)) + ")"
                args += names
        return int(await c.fetchval(sql, *args) or 0)

    async def replay_batch(self, op: OperationRecord, limit: int) -> list[tuple[str, EventRecord, str | None]]:
        """The next (cursor, event, replayed run id or None) of a replay: the events of the function's runs in the
        range with the given statuses (oldest run first), or the events received in the range (oldest first)."""
        statuses = op.params.get("statuses")
        if statuses:
            low, high = _range(op.params)
            start, bound = ("r.id>?", op.cursor) if op.cursor else ("r.id>=?", low)
            rows = await self._read(lambda c: c.fetch(
                "SELECT r.id, e.id, e.payload, e.received_at FROM runs r JOIN events e ON e.id = r.event_id "
                f"WHERE r.function_id=? AND {start} AND r.id<? AND r.status IN ("
                + ", ".join("?" * len(statuses)) + ") ORDER BY r.id LIMIT ?",
                op.function_id, bound, high, *statuses, limit))
            return [(r[0], event_record(r[1:]), r[0]) for r in rows]
        names = op.params.get("names")
        where = ["received_at<?"]
        args: list[Any] = [int(op.params["until"])]
        if op.cursor:  # keyset on (received_at, id): "<received_at:015d>:<id>"
            at, _, after = op.cursor.partition(":")
            where.append("(received_at>? OR (received_at=? AND id>?))")
            args += [int(at), int(at), after]
        else:
            where.append("received_at>=?")
            args.append(int(op.params.get("from") or 0))
        if names:
            where.append("name IN (" + ", ".join("?" * len(names)) + ")")
            args += names
        rows = await self._read(lambda c: c.fetch(
            "SELECT id, payload, received_at FROM events WHERE " + " AND ".join(where)
            + " ORDER BY received_at, id LIMIT ?", *args, limit))
        return [(f"{r[2]:015d}:{r[0]}", event_record(r), None) for r in rows]

    async def operation_run_counts(self, operation_id: str) -> dict[RunStatus, int]:
        rows = await self._read(lambda c: c.fetch(
            "SELECT status, COUNT(*) FROM runs WHERE operation_id=? GROUP BY status", operation_id))
        return {RunStatus(r[0]): int(r[1]) for r in rows}

    async def get_operation(self, operation_id: str) -> OperationRecord | None:
        row = await self._read(lambda c: c.fetchrow(f"SELECT {OPERATION_COLUMNS} FROM operations WHERE id=?",
                                                    operation_id))
        return operation_record(row) if row else None

    async def claim_operation(self, worker_id: str, now: int, lease_ms: int) -> OperationRecord | None:
        async def body(c: Conn) -> OperationRecord | None:
            row = await c.fetchrow(f"SELECT {OPERATION_COLUMNS} FROM operations WHERE status=? AND "
                                   "(lease_until IS NULL OR lease_until<? OR lease_owner=?) ORDER BY id LIMIT 1"
                                   + self.skip_locked, OperationStatus.RUNNING.value, now, worker_id)
            if row is None:
                return None
            await c.execute("UPDATE operations SET lease_owner=?, lease_until=? WHERE id=?", worker_id,
                            now + lease_ms, row[0])
            return operation_record(row)

        return await self._transaction(body)

    async def operation_batch(self, op: OperationRecord, limit: int) -> list[tuple[str, RunStatus, EventRecord | None]]:
        """The next runs of the operation's function and range after its cursor, oldest first, with their events."""
        low, high = _range(op.params)
        start, bound = ("r.id>?", op.cursor) if op.cursor else ("r.id>=?", low)
        rows = await self._read(lambda c: c.fetch(
            "SELECT r.id, r.status, e.id, e.payload, e.received_at FROM runs r LEFT JOIN events e ON e.id = r.event_id "
            f"WHERE r.function_id=? AND {start} AND r.id<? ORDER BY r.id LIMIT ?", op.function_id, bound, high, limit))
        return [(r[0], RunStatus(r[1]), event_record(r[2:]) if r[2] is not None else None) for r in rows]

    async def save_operation(self, op: OperationRecord, worker_id: str, now: int, lease_ms: int, *,
                             done: bool, runs: Sequence[tuple[NewRun, str]] = (), cancel: Sequence[str] = ()) -> bool:
        """Save progress (and the end); False when this worker no longer holds the operation (it was stopped, or
        its lease lapsed and another process took it over). A replay's `runs` are started, and a bulk cancel's
        `cancel` runs cancelled, in the same transaction as the cursor past them: a process that takes the
        operation over never starts a run twice, and its counts stay exact. `op.succeeded` and `op.processed` grow
        by the runs `cancel` really ended (one that ended meanwhile counts in neither)."""
        status = OperationStatus.COMPLETED if done else OperationStatus.RUNNING

        async def body(c: Conn) -> int | None:
            # first, that the operation is still ours (this also takes its row lock on PostgreSQL)
            if await c.execute("UPDATE operations SET lease_until=? WHERE id=? AND lease_owner=? AND status=?",
                               now + lease_ms, op.id, worker_id, OperationStatus.RUNNING.value) != 1:
                return None
            cancelled = 0
            for run_id in cancel:
                await self._lock_run(c, run_id)
                cancelled += await self._finish_run(c, run_id, RunStatus.CANCELLED, None, None, now)
            await c.execute(
                "UPDATE operations SET processed=?, succeeded=?, skipped=?, cursor=?, status=?, ended_at=?, "
                "lease_owner=?, lease_until=? WHERE id=?", op.processed + cancelled, op.succeeded + cancelled,
                op.skipped, op.cursor, status.value, now if done else None, None if done else worker_id,
                None if done else now + lease_ms, op.id)
            if runs:
                for run, event_id in runs:
                    await self._insert_run(c, run, event_id, now)
                await self._work_added(c)
            return cancelled

        cancelled = await self._transaction(body)
        if cancelled is None:
            return False
        op.processed += cancelled
        op.succeeded += cancelled
        return True

    async def stop_operation(self, operation_id: str, now: int) -> OperationRecord | None:
        async def body(c: Conn) -> OperationRecord | None:
            await c.execute("UPDATE operations SET status=?, ended_at=?, lease_owner=NULL WHERE id=? AND status=?",
                            OperationStatus.CANCELLED.value, now, operation_id, OperationStatus.RUNNING.value)
            row = await c.fetchrow(f"SELECT {OPERATION_COLUMNS} FROM operations WHERE id=?", operation_id)
            return operation_record(row) if row else None

        return await self._transaction(body)



class SqlFunctionPauses(SqlOperations):
    """Pausing a function: its runs that have not ended show PAUSED and their jobs are set aside when claimed
    (store/sql.py `claim_jobs`); resuming puts every set-aside job back at the time it was due."""

    async def pause_function(self, function_id: str, now: int) -> tuple[int, int]:
        """(when it was paused, runs paused now). Pausing a paused function changes nothing."""
        async def body(c: Conn) -> tuple[int, int]:
            await c.execute("INSERT INTO paused_functions (function_id, paused_at) VALUES (?, ?) "
                            "ON CONFLICT (function_id) DO NOTHING", function_id, now)
            paused = await c.execute("UPDATE runs SET status='PAUSED' WHERE function_id=? AND status IN "
                                     "('QUEUED', 'RUNNING')", function_id)
            return int(await c.fetchval("SELECT paused_at FROM paused_functions WHERE function_id=?",
                                        function_id)), paused

        return await self._transaction(body)

    async def resume_function(self, function_id: str, now: int, *, cancel_paused: bool) -> list[str]:
        """Resume the function; returns its runs that were paused (cancelled instead with `cancel_paused`)."""
        async def body(c: Conn) -> list[str]:
            await c.execute("DELETE FROM paused_functions WHERE function_id=?", function_id)
            run_ids = [r[0] for r in await c.fetch("SELECT id FROM runs WHERE function_id=? AND status='PAUSED' "
                                                   "ORDER BY id", function_id)]
            if cancel_paused:
                for run_id in run_ids:
                    await self._lock_run(c, run_id)
                    await self._finish_run(c, run_id, RunStatus.CANCELLED, None, {
                        "code": "cancelled", "message": "cancelled while its function was paused"}, now)
                return run_ids
            await c.execute("UPDATE runs SET status=CASE WHEN started_at IS NULL THEN 'QUEUED' ELSE 'RUNNING' END "
                            "WHERE function_id=? AND status='PAUSED'", function_id)
            # each set-aside job is due when it was due: sleeps that fell due meanwhile run now, in order
            await c.execute("UPDATE jobs SET available_at=parked_at, parked_at=NULL WHERE parked_at IS NOT NULL AND "
                            "run_id IN (SELECT id FROM runs WHERE function_id=?)", function_id)
            await self._work_added(c)
            return run_ids

        return await self._transaction(body)

    async def paused_functions(self) -> dict[str, int]:
        rows = await self._read(lambda c: c.fetch("SELECT function_id, paused_at FROM paused_functions"))
        return {r[0]: int(r[1]) for r in rows}
