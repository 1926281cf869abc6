"""SqliteStore: the embedded default. One file, WAL mode, every state change one transaction.

Statements run synchronously on the event loop: each takes microseconds (WAL, synchronous=NORMAL), and a
transaction never truly suspends (the connection adapter's coroutines complete without yielding), which is
what makes each operation one atomic transaction without locks.

Durability: WAL with synchronous=NORMAL survives a crash or kill -9 of the process (the OS still has the
pages); only a power loss or kernel crash may lose the last transactions. `synchronous="FULL"` closes that
gap at ~0.2 ms per commit on this machine. Checkpoints (which fsync) run in a thread of their own.

One engine process per database file: the engine takes an exclusive lock file beside it. That is what lets
a restarted engine release the leases of its dead predecessor at once instead of waiting for them to expire.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from stepflow.errors import ConfigError, SchemaVersionError, StoreError
from stepflow.store.sql import EVENT_DEDUP_WINDOW_MS, IDEMPOTENCY_TTL_MS, Conn, Row, SqlStore
from stepflow.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")

__all__ = ["EVENT_DEDUP_WINDOW_MS", "IDEMPOTENCY_TTL_MS", "SqliteStore", "sqlite_path_from_url"]


def sqlite_path_from_url(url: str) -> str:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or a bare path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if url.startswith("sqlite://"):
        raise ConfigError(f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
    return url


class _Connection:
    """The `Conn` protocol over sqlite3. Coroutines that never suspend: a transaction stays atomic."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def execute(self, sql: str, *args: Any) -> int:
        return self.db.execute(sql, args).rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return self.db.execute(sql, args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return self.db.execute(sql, args).fetchone()  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self.db.execute(sql, args).fetchone()
        return row[0] if row is not None else None


class SqliteStore(SqlStore):
    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        super().__init__()
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None
        self._conn: _Connection | None = None
        self._lock_fd: int | None = None
        self._checkpointer: _Checkpointer | None = None

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
        try:
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._conn = _Connection(db)
        self._checkpointer = _Checkpointer(self.path)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None
            self._conn = None
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
        """The raw connection (tests and tools read through it)."""
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    def _connection(self) -> _Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    async def _transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        conn = self._connection()
        conn.db.execute("BEGIN IMMEDIATE")
        try:
            result = await body(conn)
        except BaseException:
            conn.db.execute("ROLLBACK")
            raise
        conn.db.execute("COMMIT")
        return result

    async def _read(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        return await body(self._connection())

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has schema version {current}, newer than this stepflow ({SCHEMA_VERSION}); "
                "upgrade stepflow")
        # embedded: the database belongs to this process, so it is brought up to date on open
        for version in range(current + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in split_sql(MIGRATIONS[version - 1]):
                    db.execute(statement)
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                           "ON CONFLICT (key) DO UPDATE SET value=excluded.value", (str(version),))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


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


def split_sql(script: str) -> list[str]:
    """Statements of a migration script (executescript would commit on its own; we want one transaction)."""
    statements = []
    for chunk in script.split(";"):
        code = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
        if code:
            statements.append(code)
    return statements
