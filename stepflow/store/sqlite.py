"""SqliteStore: the embedded default. One file, WAL mode, every state change one transaction.

Calls run synchronously on the event loop: each statement takes microseconds (WAL, synchronous=NORMAL), and
a write never spans an `await`, which is what makes each operation one atomic transaction without locks.

Durability: WAL with synchronous=NORMAL survives a crash or kill -9 of the process (the OS still has the
pages); only a power loss or kernel crash may lose the last transactions. `synchronous="FULL"` closes that
gap at ~0.2 ms per commit on this machine.

One engine process per database file: the engine takes an exclusive lock file beside it. That is what lets
a restarted engine release the leases of its dead predecessor at once instead of waiting for them to expire.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stepflow import codec
from stepflow.errors import ConfigError, SchemaVersionError, StoreError
from stepflow.store.base import AdvanceRun, PauseMatcher, PlanRuns
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
    StepUpdate,
    StepWrite,
)
from stepflow.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

_RUN_COLUMNS = ("id, function_id, function_version, app_id, event_id, status, created_at, started_at, "
                "ended_at, output, error")
_STEP_COLUMNS = ("run_id, step_id, status, attempts, scheduled_at, started_at, ended_at, output, error, seq, "
                 "logs, name, kind")
_PAUSE_COLUMNS = "id, run_id, step_id, kind, event_name, expression, child_run_id, expires_at"
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
EVENT_DEDUP_WINDOW_MS = 24 * 3600 * 1000


def _run(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(id=row[0], function_id=row[1], function_version=row[2], app_id=row[3], event_id=row[4],
                     status=RunStatus(row[5]), created_at=row[6], started_at=row[7], ended_at=row[8],
                     output=codec.unpack(row[9]), error=codec.unpack(row[10]))


def _step(row: tuple[Any, ...]) -> StepRecord:
    return StepRecord(run_id=row[0], step_id=row[1], status=StepStatus(row[2]), attempts=row[3],
                      scheduled_at=row[4], started_at=row[5], ended_at=row[6], output=codec.unpack(row[7]),
                      error=codec.unpack(row[8]), seq=row[9], logs=row[10], name=row[11], kind=row[12])


def _event(row: tuple[Any, ...]) -> EventRecord:
    payload = codec.unpack(row[1])
    return EventRecord(id=row[0], name=payload["name"], data=payload["data"], ts=payload["ts"],
                       received_at=row[2], user=payload.get("user"), v=payload.get("v"))


def _pack(value: Any) -> bytes | None:
    return codec.pack(value) if value is not None else None


def sqlite_path_from_url(url: str) -> str:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or a bare path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if url.startswith("sqlite://"):
        raise ConfigError(f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
    return url


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._checkpointer: _Checkpointer | None = None
        # Evaluates a pause's CEL expression; set by the engine (the store does not know CEL).
        self.pause_matcher: PauseMatcher = lambda expression, run_event, candidate: expression is None
        # Called with the ids of runs that ended inside a transaction (so waiters can be woken).
        self.on_run_ended: Callable[[str], None] = lambda run_id: None

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("PRAGMA cache_size=-32000")
        # Checkpoints (copying the WAL back into the database, with fsyncs) run in a thread of their own,
        # not inside some unlucky commit on the event loop: it keeps commits at tens of microseconds.
        db.execute("PRAGMA wal_autocheckpoint=0")
        self._db = db
        self._migrate()
        self._checkpointer = _Checkpointer(self.path)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def acquire_engine_lock(self) -> None:
        """Make this process the only engine on the file (see module docstring)."""
        lock_path = str(self.path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"another stepflow engine (pid {holder}) is already running on {self.path}; "
                "stop it, or point this one at another database") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _migrate(self) -> None:
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has schema version {current}, newer than this stepflow ({SCHEMA_VERSION}); "
                "upgrade stepflow")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx():
                for statement in _split_sql(MIGRATIONS[version - 1]):
                    db.execute(statement)
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                           "ON CONFLICT (key) DO UPDATE SET value=excluded.value", (str(version),))

    # --- functions ----------------------------------------------------------------------------------------

    async def save_function(self, function_id: str, app_id: str, config: dict[str, Any]) -> int:
        blob = codec.pack(config)
        with self._tx() as db:
            row = db.execute("SELECT version, config FROM functions WHERE id=? ORDER BY version DESC LIMIT 1",
                             (function_id,)).fetchone()
            if row and row[1] == blob:
                version = int(row[0])
                db.execute("UPDATE functions SET active=1 WHERE id=? AND version=?", (function_id, version))
            else:
                version = int(row[0]) + 1 if row else 1
                db.execute("UPDATE functions SET active=0 WHERE id=?", (function_id,))
                db.execute("INSERT INTO functions (id, version, app_id, config, created_at, active) "
                           "VALUES (?, ?, ?, ?, CAST(strftime('%s','now') AS INTEGER) * 1000, 1)",
                           (function_id, version, app_id, blob))
        return version

    async def get_function(self, function_id: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        if version is None:
            row = self.db.execute("SELECT version, config FROM functions WHERE id=? ORDER BY version DESC LIMIT 1",
                                  (function_id,)).fetchone()
        else:
            row = self.db.execute("SELECT version, config FROM functions WHERE id=? AND version=?",
                                  (function_id, version)).fetchone()
        return (int(row[0]), codec.unpack(row[1])) if row else None

    async def list_functions(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self.db.execute("SELECT version, config FROM functions WHERE active=1 ORDER BY id").fetchall()
        return [(int(r[0]), codec.unpack(r[1])) for r in rows]

    async def remove_function(self, function_id: str) -> None:
        self.db.execute("UPDATE functions SET active=0 WHERE id=?", (function_id,))

    # --- events and runs ----------------------------------------------------------------------------------

    async def ingest_events(self, events: list[EventRecord], plan: PlanRuns) -> list[str]:
        ids: list[str] = []
        with self._tx():
            for ev in events:
                ids.append(ev.id)
                if self._insert_event(ev):
                    for run in plan(ev):
                        self._insert_run(run, ev.id, ev.received_at)
                    self._match_pauses(ev)
        return ids

    async def fire_cron(self, function_id: str, tick_at: int, new_event: NewEvent) -> bool:
        """Start the runs of one cron tick, exactly once however many processes try."""
        with self._tx() as db:
            if db.execute("INSERT OR IGNORE INTO cron_ticks (function_id, tick_at) VALUES (?, ?)",
                          (function_id, tick_at)).rowcount == 0:
                return False
            self._insert_new_event(new_event)
        return True

    def _insert_event(self, ev: EventRecord) -> bool:
        """False when the id was stored less than 24 h ago: a duplicate, to be ignored.

        An id reused after the window starts a new event: the old one is kept under `<id>:<received_at>`
        (its runs follow it), so nothing is lost and the id names the latest event.
        """
        db = self.db
        args = (ev.id, ev.name, codec.pack(ev.to_dict()), ev.ts, ev.received_at)
        insert = "INSERT OR IGNORE INTO events (id, name, payload, ts, received_at) VALUES (?, ?, ?, ?, ?)"
        if db.execute(insert, args).rowcount == 1:
            return True
        row = db.execute("SELECT received_at FROM events WHERE id=?", (ev.id,)).fetchone()
        if row is None or ev.received_at - row[0] < EVENT_DEDUP_WINDOW_MS:
            return False
        archived = f"{ev.id}:{row[0]}"
        db.execute("UPDATE events SET id=? WHERE id=?", (archived, ev.id))
        db.execute("UPDATE runs SET event_id=? WHERE event_id=?", (archived, ev.id))
        db.execute(insert, args)
        return True

    def _insert_new_event(self, new: NewEvent) -> None:
        if self._insert_event(new.event):
            for run in new.runs:
                self._insert_run(run, new.event.id, new.event.received_at)
            self._match_pauses(new.event)

    def _insert_run(self, run: NewRun, event_id: str | None, now: int) -> bool:
        db = self.db
        if run.idempotency_key is not None:
            row = db.execute("SELECT run_id, expires_at FROM idempotency WHERE function_id=? AND key=?",
                             (run.function_id, run.idempotency_key)).fetchone()
            if row is not None and row[1] > now:
                return False  # a run for this key already exists: this event starts nothing
            db.execute("INSERT OR REPLACE INTO idempotency (function_id, key, run_id, expires_at) "
                       "VALUES (?, ?, ?, ?)", (run.function_id, run.idempotency_key, run.run_id,
                                               now + IDEMPOTENCY_TTL_MS))
        start_deadline = now + run.start_timeout_ms if run.start_timeout_ms is not None else None
        db.execute(f"INSERT INTO runs ({_RUN_COLUMNS}, finish_timeout_ms, start_deadline) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, ?, ?)",
                   (run.run_id, run.function_id, run.function_version, run.app_id, event_id, run.status.value,
                    now, run.finish_timeout_ms, start_deadline))
        self._insert_jobs(run.run_id, run.jobs)
        if run.start_timeout_ms is not None:
            self._insert_jobs(run.run_id, [NewJob("", now + run.start_timeout_ms, JobKind.RUN_TIMEOUT,
                                                  {"which": "start"}, step_row=False)])
        for pause in run.pauses:
            self._insert_pause(pause, now)
        return True

    def _insert_jobs(self, run_id: str, jobs: list[NewJob]) -> None:
        db = self.db
        for job in jobs:
            if job.kind is JobKind.CALL and not job.payload:
                self._enqueue_call(run_id, job.available_at, job.attempt)
                continue
            db.execute("INSERT INTO jobs (run_id, step_id, kind, payload, available_at, attempt) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (run_id, job.step_id, job.kind.value, _pack(job.payload), job.available_at, job.attempt))
            if job.step_row:
                db.execute("INSERT INTO steps (run_id, step_id, status, scheduled_at, name, kind) "
                           "VALUES (?, ?, 'scheduled', ?, ?, ?) ON CONFLICT (run_id, step_id) DO UPDATE SET "
                           "status='scheduled', scheduled_at=excluded.scheduled_at",
                           (run_id, job.step_id, job.available_at, job.name, job.step_kind))

    def _enqueue_call(self, run_id: str, at: int, attempt: int = 0) -> None:
        """At most one waiting (unleased) untargeted call per run: calling twice would replay twice."""
        db = self.db
        row = db.execute("SELECT id, available_at FROM jobs WHERE run_id=? AND kind='call' AND payload IS NULL "
                         "AND lease_owner IS NULL", (run_id,)).fetchone()
        if row is not None:
            if at < row[1]:
                db.execute("UPDATE jobs SET available_at=?, attempt=? WHERE id=?", (at, attempt, row[0]))
            return
        db.execute("INSERT INTO jobs (run_id, step_id, kind, available_at, attempt) VALUES (?, '', 'call', ?, ?)",
                   (run_id, at, attempt))

    def _call_if_idle(self, run_id: str, now: int) -> None:
        """Call the function again once nothing of the run is pending (all parallel work has settled)."""
        db = self.db
        status = db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
        if status is None or RunStatus(status[0]).is_terminal:
            return
        busy = db.execute("SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id=? AND kind != 'run_timeout') OR "
                          "EXISTS (SELECT 1 FROM pauses WHERE run_id=? AND kind != 'cancel')",
                          (run_id, run_id)).fetchone()[0]
        if not busy:
            self._enqueue_call(run_id, now)

    # --- pauses -------------------------------------------------------------------------------------------

    def _insert_pause(self, pause: NewPause, now: int) -> None:
        db = self.db
        cur = db.execute("INSERT INTO pauses (run_id, step_id, kind, event_name, expression, child_run_id, "
                         "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (pause.run_id, pause.step_id, pause.kind, pause.event_name, pause.expression,
                          pause.child_run_id, pause.expires_at))
        pause_id = int(cur.lastrowid or 0)
        if pause.kind == "event" and pause.since is not None and pause.event_name is not None:
            # The window: an event received since the call that reached wait_for_event began is not missed,
            # even though it arrived before this pause existed.
            run_event = self._run_event(pause.run_id)
            for row in db.execute("SELECT id, payload, received_at FROM events WHERE name=? AND received_at>=? "
                                  "ORDER BY received_at, id", (pause.event_name, pause.since)).fetchall():
                candidate = _event(row).to_dict()
                if self.pause_matcher(pause.expression, run_event, candidate):
                    self._resolve_pause(pause_id, pause.run_id, pause.step_id, {"data": candidate}, None, now)
                    return
        if pause.kind == "invoke" and pause.child_run_id is not None:
            child = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (pause.child_run_id,)).fetchone()
            if child is not None and RunStatus(child[5]).is_terminal:
                self._resolve_invoke(pause_id, pause.run_id, pause.step_id, _run(child), now)

    def _run_event(self, run_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT e.payload FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id=?",
                              (run_id,)).fetchone()
        return codec.unpack(row[0]) if row else {}

    def _match_pauses(self, ev: EventRecord) -> None:
        rows = self.db.execute(f"SELECT {_PAUSE_COLUMNS} FROM pauses WHERE event_name=? ORDER BY id",
                               (ev.name,)).fetchall()
        if not rows:
            return
        candidate = ev.to_dict()
        for row in rows:
            pause = Pause(*row)
            if not self.pause_matcher(pause.expression, self._run_event(pause.run_id), candidate):
                continue
            if pause.kind == "cancel":
                self._finish_run(pause.run_id, RunStatus.CANCELLED, None,
                                 {"code": "cancelled", "message": f"cancelled by event {ev.name} ({ev.id})"},
                                 ev.received_at)
            else:
                self._resolve_pause(pause.id, pause.run_id, pause.step_id, {"data": candidate}, None,
                                    ev.received_at)

    def _resolve_pause(self, pause_id: int, run_id: str, step_id: str, memo: dict[str, Any] | None,
                       error: dict[str, Any] | None, now: int) -> None:
        db = self.db
        if db.execute("DELETE FROM pauses WHERE id=?", (pause_id,)).rowcount == 0:
            return
        db.execute("DELETE FROM jobs WHERE run_id=? AND step_id=? AND kind='timeout'", (run_id, step_id))
        self._write_step(run_id, StepWrite(step_id=step_id,
                                           status=StepStatus.FAILED if error else StepStatus.COMPLETED,
                                           output=memo, error=error, ended_at=now))
        self._call_if_idle(run_id, now)

    def _resolve_invoke(self, pause_id: int, run_id: str, step_id: str, child: RunRecord, now: int) -> None:
        if child.status is RunStatus.COMPLETED:
            self._resolve_pause(pause_id, run_id, step_id, {"data": child.output}, None, now)
        else:
            detail = (child.error or {}).get("message", "") if isinstance(child.error, dict) else ""
            error = {"name": "InvokedRunFailed", "code": "invoked_run_failed", "child_run_id": child.id,
                     "message": f"invoked function {child.function_id} run {child.id} ended "
                                f"{child.status.title}" + (f": {detail}" if detail else "")}
            self._resolve_pause(pause_id, run_id, step_id, None, error, now)

    # --- reads --------------------------------------------------------------------------------------------

    async def get_event(self, event_id: str) -> EventRecord | None:
        row = self.db.execute("SELECT id, payload, received_at FROM events WHERE id=?", (event_id,)).fetchone()
        return _event(row) if row else None

    async def get_event_runs(self, event_id: str) -> list[RunRecord]:
        rows = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE event_id=? ORDER BY id",
                               (event_id,)).fetchall()
        return [_run(r) for r in rows]

    async def get_run(self, run_id: str) -> RunRecord | None:
        row = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        return _run(row) if row else None

    async def get_run_steps(self, run_id: str) -> list[StepRecord]:
        rows = self.db.execute(
            f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id=? "
            "ORDER BY CASE WHEN seq > 0 THEN seq ELSE 1000000 END, COALESCE(started_at, scheduled_at, ended_at), "
            "step_id", (run_id,)).fetchall()
        return [_step(r) for r in rows]

    async def list_runs(self, *, status: RunStatus | None = None, function_id: str | None = None,
                        cursor: str | None = None, limit: int = 50) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status=?")
            args.append(status.value)
        if function_id is not None:
            where.append("function_id=?")
            args.append(function_id)
        if cursor is not None:
            where.append("id<?")
            args.append(cursor)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [_run(r) for r in self.db.execute(sql, args).fetchall()]

    # --- run control --------------------------------------------------------------------------------------

    async def cancel_run(self, run_id: str, now: int) -> RunRecord | None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone() is None:
                return None
            self._finish_run(run_id, RunStatus.CANCELLED, None, None, now)
        return await self.get_run(run_id)

    def _finish_run(self, run_id: str, status: RunStatus, output: Any, error: dict[str, Any] | None,
                    now: int) -> None:
        """End a run: no more work for it; a step executing right now may finish and be recorded."""
        db = self.db
        if db.execute("UPDATE runs SET status=?, ended_at=?, output=?, error=? WHERE id=? AND status NOT IN "
                      "('COMPLETED', 'FAILED', 'CANCELLED')",
                      (status.value, now, _pack(output), _pack(error), run_id)).rowcount == 0:
            return
        db.execute("DELETE FROM jobs WHERE run_id=?", (run_id,))
        db.execute("DELETE FROM pauses WHERE run_id=?", (run_id,))
        db.execute("UPDATE steps SET status='cancelled', ended_at=? WHERE run_id=? AND status='scheduled'",
                   (now, run_id))
        self.on_run_ended(run_id)
        # runs that invoked this one continue with its output (or its failure)
        waiting = db.execute("SELECT id, run_id, step_id FROM pauses WHERE kind='invoke' AND child_run_id=?",
                             (run_id,)).fetchall()
        if waiting:
            child = _run(db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone())
            for pause_id, parent_id, step_id in waiting:
                self._resolve_invoke(pause_id, parent_id, step_id, child, now)

    # --- work queue ---------------------------------------------------------------------------------------

    async def claim_jobs(self, worker_id: str, limit: int, lease_ms: int, now: int) -> list[Job]:
        jobs: list[Job] = []
        with self._tx() as db:
            # An untargeted call is never claimed while another call of the same run is executing: two
            # concurrent replays of one function would both run its next step.
            rows = db.execute(
                # a job still leased here has an expired lease: its worker died mid-attempt, which counts
                "UPDATE jobs SET attempt=attempt+(lease_owner IS NOT NULL), lease_owner=?, available_at=?, "
                "token=token+1 WHERE id IN "
                "(SELECT j.id FROM jobs j WHERE j.available_at<=? AND NOT (j.kind='call' AND j.payload IS NULL "
                " AND EXISTS (SELECT 1 FROM jobs k WHERE k.run_id=j.run_id AND k.kind='call' AND k.payload IS "
                " NULL AND k.lease_owner IS NOT NULL AND k.id != j.id)) ORDER BY j.available_at LIMIT ?) "
                "RETURNING id, run_id, step_id, token, attempt, kind, payload",
                (worker_id, now + lease_ms, now, limit)).fetchall()
            for job_id, run_id, step_id, token, attempt, kind, payload in rows:
                run = db.execute("SELECT function_id, function_version, app_id, status, finish_timeout_ms, "
                                 "start_deadline FROM runs WHERE id=?", (run_id,)).fetchone()
                if run is None or RunStatus(run[3]).is_terminal:
                    db.execute("DELETE FROM jobs WHERE id=?", (job_id,))  # orphan of an ended run
                    continue
                job_kind = JobKind(kind)
                if run[3] == "QUEUED" and run[5] is not None and now > run[5] and job_kind is not JobKind.RUN_TIMEOUT:
                    late = (now - run[5]) / 1000
                    self._finish_run(run_id, RunStatus.CANCELLED, None, {
                        "code": "start_timeout", "message": "cancelled: the run did not start within its start "
                        f"timeout (it could first start {late:g}s after the deadline)"}, now)
                    continue
                job_payload = codec.unpack(payload)
                if run[3] == "QUEUED" and job_kind in (JobKind.STEP, JobKind.CALL):
                    db.execute("UPDATE runs SET status='RUNNING', started_at=? WHERE id=?", (now, run_id))
                    if run[4] is not None:
                        self._insert_jobs(run_id, [NewJob("", now + run[4], JobKind.RUN_TIMEOUT,
                                                          {"which": "finish"}, step_row=False)])
                target = step_id if job_kind is JobKind.STEP else (job_payload or {}).get("target")
                if target:
                    db.execute("UPDATE steps SET status='running', attempts=?, started_at=COALESCE(started_at, ?) "
                               "WHERE run_id=? AND step_id=?", (attempt + 1, now, run_id, target))
                jobs.append(Job(id=job_id, run_id=run_id, step_id=step_id, token=token, function_id=run[0],
                                function_version=run[1], app_id=run[2], attempt=attempt, kind=job_kind,
                                payload=job_payload))
        return jobs

    async def renew_leases(self, worker_id: str, until: int) -> int:
        return self.db.execute("UPDATE jobs SET available_at=? WHERE lease_owner=?", (until, worker_id)).rowcount

    async def release_leases(self, worker_id: str | None, now: int) -> int:
        """worker_id=None: recovery after a crash — every attempt in flight was lost, and counts as one (so a
        step that kills the engine every time cannot loop forever). A worker stopping gracefully releases its
        own jobs without counting: it interrupted them."""
        if worker_id is None:
            cur = self.db.execute("UPDATE jobs SET lease_owner=NULL, available_at=?, attempt=attempt+1 "
                                  "WHERE lease_owner IS NOT NULL", (now,))
        else:
            cur = self.db.execute("UPDATE jobs SET lease_owner=NULL, available_at=? WHERE lease_owner=?",
                                  (now, worker_id))
        return cur.rowcount

    async def next_due_at(self) -> int | None:
        row = self.db.execute("SELECT MIN(available_at) FROM jobs").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    async def load_run_state(self, run_id: str) -> RunState | None:
        return self._load_run_state(run_id)

    def _load_run_state(self, run_id: str, exclude_job: int | None = None) -> RunState | None:
        db = self.db
        row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return None
        run = _run(row)
        event = None
        if run.event_id is not None:
            ev = db.execute("SELECT payload FROM events WHERE id=?", (run.event_id,)).fetchone()
            event = codec.unpack(ev[0]) if ev else None
        steps = {r[1]: _step(r) for r in db.execute(f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id=?",
                                                     (run_id,)).fetchall()}
        pending_jobs = db.execute("SELECT COUNT(*) FROM jobs WHERE run_id=? AND kind != 'run_timeout' AND id != ?",
                                  (run_id, exclude_job or -1)).fetchone()[0]
        pending_pauses = db.execute("SELECT COUNT(*) FROM pauses WHERE run_id=? AND kind != 'cancel'",
                                    (run_id,)).fetchone()[0]
        return RunState(run=run, event=event, steps=steps, pending_jobs=pending_jobs, pending_pauses=pending_pauses)

    def _write_step(self, run_id: str, w: StepWrite) -> None:
        db = self.db
        seq = 0
        if w.status in (StepStatus.COMPLETED, StepStatus.FAILED):
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE run_id=?", (run_id,)).fetchone()[0]
        db.execute(
            "INSERT INTO steps (run_id, step_id, status, attempts, scheduled_at, ended_at, output, error, seq, "
            "name, kind) VALUES (?, ?, ?, COALESCE(?, 0), ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO "
            "UPDATE SET status=excluded.status, attempts=COALESCE(?, steps.attempts), "
            "scheduled_at=COALESCE(excluded.scheduled_at, steps.scheduled_at), "
            "ended_at=COALESCE(excluded.ended_at, steps.ended_at), "
            "output=COALESCE(excluded.output, steps.output), error=excluded.error, "
            "seq=CASE WHEN excluded.seq > 0 THEN excluded.seq ELSE steps.seq END, "
            "name=COALESCE(excluded.name, steps.name), kind=COALESCE(excluded.kind, steps.kind)",
            (run_id, w.step_id, w.status.value, w.attempts, w.scheduled_at, w.ended_at, _pack(w.output),
             _pack(w.error), seq, w.name, w.kind, w.attempts))

    async def settle_job(self, job: Job, update: StepUpdate | None, advance: AdvanceRun | None,
                         now: int) -> RunRecord | None:
        with self._tx() as db:
            owned = db.execute("DELETE FROM jobs WHERE id=? AND token=?", (job.id, job.token)).rowcount == 1
            if not owned:
                # Cancelled (or lease lost): keep what the attempt produced, for the record, and stop there.
                if update is not None:
                    ended = update.status if update.status in (StepStatus.COMPLETED, StepStatus.FAILED) \
                        else StepStatus.CANCELLED
                    db.execute("UPDATE steps SET status=?, output=?, error=?, ended_at=?, logs=COALESCE(?, logs) "
                               "WHERE run_id=? AND step_id=? AND status IN ('running', 'cancelled')",
                               (ended.value, _pack(update.output), _pack(update.error), update.ended_at,
                                update.logs, job.run_id, job.step_id))
                return None
            if update is not None:
                seq = 0
                if update.status in (StepStatus.COMPLETED, StepStatus.FAILED):
                    seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE run_id=?",
                                     (job.run_id,)).fetchone()[0]
                db.execute("UPDATE steps SET status=?, ended_at=?, output=?, error=?, seq=?, logs=COALESCE(?, logs) "
                           "WHERE run_id=? AND step_id=?",
                           (update.status.value, update.ended_at, _pack(update.output), _pack(update.error), seq,
                            update.logs, job.run_id, job.step_id))
            if advance is not None:
                state = self._load_run_state(job.run_id)
                if state is None:
                    raise StoreError(f"run {job.run_id} vanished while settling job {job.id}")
                decision = advance(state)
                for write in decision.steps:
                    self._write_step(job.run_id, write)
                for step_id, reason in decision.skipped.items():
                    self._write_step(job.run_id, StepWrite(step_id=step_id, status=StepStatus.SKIPPED,
                                                           error=reason, ended_at=now))
                for step_id in decision.remove_pauses:
                    db.execute("DELETE FROM pauses WHERE run_id=? AND step_id=?", (job.run_id, step_id))
                for new_event in decision.events:
                    self._insert_new_event(new_event)
                self._insert_jobs(job.run_id, decision.jobs)
                for pause in decision.pauses:
                    self._insert_pause(pause, now)
                if decision.finish is not None:
                    self._finish_run(job.run_id, decision.finish, decision.output, decision.error, now)
            row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (job.run_id,)).fetchone()
        return _run(row)

    async def retry_job(self, job: Job, update: StepUpdate, available_at: int) -> bool:
        with self._tx() as db:
            owned = db.execute("UPDATE jobs SET available_at=?, attempt=attempt+1, lease_owner=NULL "
                               "WHERE id=? AND token=?", (available_at, job.id, job.token)).rowcount == 1
            # not ours any more: the run ended meanwhile (the step shows cancelled), or another worker has it
            run_ended = not owned and db.execute(
                "SELECT status IN ('COMPLETED', 'FAILED', 'CANCELLED') FROM runs WHERE id=?",
                (job.run_id,)).fetchone()[0]
            db.execute("UPDATE steps SET status=CASE WHEN ? THEN 'scheduled' WHEN ? THEN 'cancelled' ELSE status END, "
                       "ended_at=CASE WHEN ? THEN ? ELSE ended_at END, "
                       "scheduled_at=?, error=?, logs=COALESCE(?, logs) WHERE run_id=? AND step_id=?",
                       (owned, run_ended, run_ended, update.ended_at, available_at, _pack(update.error),
                        update.logs, job.run_id, job.step_id))
        return owned


class _Checkpointer(threading.Thread):
    """Checkpoints the WAL every `interval` seconds from its own connection (PASSIVE: never blocks writers)."""

    def __init__(self, path: Path, interval: float = 0.5) -> None:
        super().__init__(name=f"stepflow-checkpoint-{path.name}", daemon=True)
        self._path = path
        self._interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopped.wait(self._interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or locked: the next round will do it
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (executescript would commit on its own; we want one transaction)."""
    statements = []
    for chunk in script.split(";"):
        code = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
        if code:
            statements.append(code)
    return statements
