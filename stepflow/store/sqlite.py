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
from pathlib import Path
from typing import Any

from stepflow import codec
from stepflow.errors import ConfigError, SchemaVersionError, StoreError
from stepflow.store.base import AdvanceRun, PlanRuns
from stepflow.store.records import (
    EventRecord,
    Job,
    RunRecord,
    RunState,
    RunStatus,
    StepRecord,
    StepStatus,
    StepUpdate,
)
from stepflow.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

_RUN_COLUMNS = ("id, function_id, function_version, app_id, event_id, status, created_at, started_at, "
                "ended_at, output, error")
_STEP_COLUMNS = ("run_id, step_id, status, attempts, scheduled_at, started_at, ended_at, output, error, seq, "
                 "logs")


def _run(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(id=row[0], function_id=row[1], function_version=row[2], app_id=row[3], event_id=row[4],
                     status=RunStatus(row[5]), created_at=row[6], started_at=row[7], ended_at=row[8],
                     output=codec.unpack(row[9]), error=codec.unpack(row[10]))


def _step(row: tuple[Any, ...]) -> StepRecord:
    return StepRecord(run_id=row[0], step_id=row[1], status=StepStatus(row[2]), attempts=row[3],
                      scheduled_at=row[4], started_at=row[5], ended_at=row[6], output=codec.unpack(row[7]),
                      error=codec.unpack(row[8]), seq=row[9], logs=row[10])


def _event(row: tuple[Any, ...]) -> EventRecord:
    payload = codec.unpack(row[1])
    return EventRecord(id=row[0], name=payload["name"], data=payload["data"], ts=payload["ts"],
                       received_at=row[2], user=payload.get("user"), v=payload.get("v"))


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

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        self.open_sync()

    def open_sync(self) -> None:
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
        self._db = db
        self._migrate()

    async def close(self) -> None:
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
            db.execute("BEGIN IMMEDIATE")
            for statement in _split_sql(MIGRATIONS[version - 1]):
                db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                       "ON CONFLICT (key) DO UPDATE SET value=excluded.value", (str(version),))
            db.execute("COMMIT")

    # --- functions ----------------------------------------------------------------------------------------

    async def save_function(self, function_id: str, app_id: str, config: dict[str, Any]) -> int:
        db = self.db
        blob = codec.pack(config)
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT version, config FROM functions WHERE id=? ORDER BY version DESC LIMIT 1",
                             (function_id,)).fetchone()
            if row and row[1] == blob:
                version = int(row[0])
                db.execute("UPDATE functions SET active=1 WHERE id=? AND version=?", (function_id, version))
            else:
                version = int(row[0]) + 1 if row else 1
                db.execute("UPDATE functions SET active=0 WHERE id=?", (function_id,))
                db.execute("INSERT INTO functions (id, version, app_id, config, created_at, active) "
                           "VALUES (?, ?, ?, ?, strftime('%s','now')*1000, 1)",
                           (function_id, version, app_id, blob))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
        db = self.db
        ids: list[str] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for ev in events:
                ids.append(ev.id)
                payload = codec.pack(ev.to_dict())
                cur = db.execute("INSERT OR IGNORE INTO events (id, name, payload, ts, received_at) "
                                 "VALUES (?, ?, ?, ?, ?)", (ev.id, ev.name, payload, ev.ts, ev.received_at))
                if cur.rowcount == 0:
                    continue  # duplicate id: same event, no second run
                for run in plan(ev):
                    db.execute(f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
                               (run.run_id, run.function_id, run.function_version, run.app_id, ev.id,
                                run.status.value, ev.received_at))
                    self._insert_jobs(run.run_id, run.jobs)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ids

    def _insert_jobs(self, run_id: str, jobs: list[Any]) -> None:
        db = self.db
        for job in jobs:
            db.execute("INSERT INTO jobs (run_id, step_id, available_at) VALUES (?, ?, ?)",
                       (run_id, job.step_id, job.available_at))
            db.execute("INSERT INTO steps (run_id, step_id, status, scheduled_at) VALUES (?, ?, 'scheduled', ?) "
                       "ON CONFLICT (run_id, step_id) DO UPDATE SET status='scheduled', "
                       "scheduled_at=excluded.scheduled_at", (run_id, job.step_id, job.available_at))

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
            "ORDER BY CASE WHEN seq > 0 THEN seq ELSE 1000000 END, COALESCE(started_at, scheduled_at), step_id",
            (run_id,)).fetchall()
        return [_step(r) for r in rows]

    async def list_runs(self, *, status: RunStatus | None = None, function_id: str | None = None,
                        cursor: str | None = None, limit: int = 50) -> list[RunRecord]:
        where, args = [], []
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

    async def cancel_run(self, run_id: str, now: int) -> RunRecord | None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return None
            if not RunStatus(row[0]).is_terminal:
                db.execute("UPDATE runs SET status='CANCELLED', ended_at=? WHERE id=?", (now, run_id))
                db.execute("DELETE FROM jobs WHERE run_id=?", (run_id,))
                # a step executing right now may finish and be recorded; nothing waiting will start
                db.execute("UPDATE steps SET status='cancelled', ended_at=? WHERE run_id=? AND status='scheduled'",
                           (now, run_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return await self.get_run(run_id)

    # --- work queue ---------------------------------------------------------------------------------------

    async def claim_jobs(self, worker_id: str, limit: int, lease_ms: int, now: int) -> list[Job]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "UPDATE jobs SET lease_owner=?, available_at=?, token=token+1 WHERE id IN "
                "(SELECT id FROM jobs WHERE available_at<=? ORDER BY available_at LIMIT ?) "
                "RETURNING id, run_id, step_id, token, attempt",
                (worker_id, now + lease_ms, now, limit)).fetchall()
            jobs: list[Job] = []
            for job_id, run_id, step_id, token, attempt in rows:
                run = db.execute("SELECT function_id, function_version, app_id, status FROM runs WHERE id=?",
                                 (run_id,)).fetchone()
                if run is None or RunStatus(run[3]).is_terminal:
                    db.execute("DELETE FROM jobs WHERE id=?", (job_id,))  # orphan of an ended run
                    continue
                if run[3] == "QUEUED":
                    db.execute("UPDATE runs SET status='RUNNING', started_at=? WHERE id=?", (now, run_id))
                db.execute("UPDATE steps SET status='running', attempts=?, started_at=COALESCE(started_at, ?) "
                           "WHERE run_id=? AND step_id=?", (attempt + 1, now, run_id, step_id))
                jobs.append(Job(id=job_id, run_id=run_id, step_id=step_id, token=token, function_id=run[0],
                                function_version=run[1], app_id=run[2], attempt=attempt))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return jobs

    async def renew_leases(self, worker_id: str, until: int) -> int:
        cur = self.db.execute("UPDATE jobs SET available_at=? WHERE lease_owner=?", (until, worker_id))
        return cur.rowcount

    async def release_leases(self, worker_id: str | None, now: int) -> int:
        if worker_id is None:
            cur = self.db.execute("UPDATE jobs SET lease_owner=NULL, available_at=? WHERE lease_owner IS NOT NULL",
                                  (now,))
        else:
            cur = self.db.execute("UPDATE jobs SET lease_owner=NULL, available_at=? WHERE lease_owner=?",
                                  (now, worker_id))
        return cur.rowcount

    async def next_due_at(self) -> int | None:
        row = self.db.execute("SELECT MIN(available_at) FROM jobs").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    async def load_run_state(self, run_id: str) -> RunState | None:
        return self._load_run_state(run_id)

    def _load_run_state(self, run_id: str) -> RunState | None:
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
        return RunState(run=run, event=event, steps=steps)

    async def settle_job(self, job: Job, update: StepUpdate, advance: AdvanceRun | None) -> RunRecord | None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            owned = db.execute("DELETE FROM jobs WHERE id=? AND token=?", (job.id, job.token)).rowcount == 1
            if not owned:
                # Cancelled (or lease lost): keep what the attempt produced, for the record, and stop there.
                db.execute("UPDATE steps SET output=?, error=?, ended_at=?, logs=COALESCE(?, logs) "
                           "WHERE run_id=? AND step_id=? AND status IN ('running', 'cancelled')",
                           (codec.pack(update.output) if update.output is not None else None,
                            codec.pack(update.error) if update.error is not None else None,
                            update.ended_at, update.logs, job.run_id, job.step_id))
                db.execute("COMMIT")
                return None
            seq = 0
            if update.status is StepStatus.COMPLETED:
                seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE run_id=?",
                                 (job.run_id,)).fetchone()[0]
            db.execute(
                "UPDATE steps SET status=?, ended_at=?, output=?, error=?, seq=?, logs=COALESCE(?, logs) "
                "WHERE run_id=? AND step_id=?",
                (update.status.value, update.ended_at,
                 codec.pack(update.output) if update.output is not None else None,
                 codec.pack(update.error) if update.error is not None else None,
                 seq, update.logs, job.run_id, job.step_id))
            if advance is not None:
                state = self._load_run_state(job.run_id)
                if state is None:
                    raise StoreError(f"run {job.run_id} vanished while settling step {job.step_id}")
                decision = advance(state)
                self._insert_jobs(job.run_id, decision.jobs)
                for step_id, reason in decision.skipped.items():
                    db.execute("INSERT INTO steps (run_id, step_id, status, ended_at, error) "
                               "VALUES (?, ?, 'skipped', ?, ?) ON CONFLICT (run_id, step_id) DO UPDATE SET "
                               "status='skipped', ended_at=excluded.ended_at, error=excluded.error",
                               (job.run_id, step_id, update.ended_at,
                                codec.pack(reason) if reason is not None else None))
                if decision.finish is not None:
                    db.execute("UPDATE runs SET status=?, ended_at=?, output=?, error=? WHERE id=?",
                               (decision.finish.value, update.ended_at,
                                codec.pack(decision.output) if decision.output is not None else None,
                                codec.pack(decision.error) if decision.error is not None else None,
                                job.run_id))
                    db.execute("DELETE FROM jobs WHERE run_id=?", (job.run_id,))
                    db.execute("UPDATE steps SET status='cancelled', ended_at=? WHERE run_id=? AND "
                               "status='scheduled'", (update.ended_at, job.run_id))
            row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (job.run_id,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return _run(row)

    async def retry_job(self, job: Job, update: StepUpdate, available_at: int) -> bool:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            owned = db.execute("UPDATE jobs SET available_at=?, attempt=attempt+1, lease_owner=NULL "
                               "WHERE id=? AND token=?", (available_at, job.id, job.token)).rowcount == 1
            db.execute("UPDATE steps SET status=CASE WHEN ? THEN 'scheduled' ELSE status END, "
                       "scheduled_at=?, error=?, logs=COALESCE(?, logs) WHERE run_id=? AND step_id=?",
                       (owned, available_at, codec.pack(update.error), update.logs, job.run_id, job.step_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return owned


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (executescript would commit on its own; we want one transaction)."""
    statements = []
    for chunk in script.split(";"):
        code = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
        if code:
            statements.append(code)
    return statements
