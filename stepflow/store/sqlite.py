"""SqliteStore: the embedded default. One file, WAL mode, every state change one transaction.

Statements run synchronously on the event loop: each takes microseconds (WAL, synchronous=NORMAL), and a
transaction never truly suspends (the connection adapter's coroutines complete without yielding), which is
what makes each operation one atomic transaction without locks.

Durability: WAL with synchronous=NORMAL survives a crash or kill -9 of the process (the OS still has the
pages); only a power loss or kernel crash may lose the last transactions. `synchronous="FULL"` closes that
gap at ~0.2 ms per commit on this machine. Checkpoints (which fsync) run in a thread of their own.

One engine process per database file: the engine takes an exclusive `flock()` on the database file itself,
before SQLite opens it. The lock belongs to the file (its inode), not to the path, so a second engine reaching
the same file through a symlink, a hard link or another relative path is refused as surely as one given the
same path. (`flock` locks are independent of the POSIX byte-range locks SQLite takes on the same file, so the
two never interfere; the lock's descriptor is closed only after SQLite's connections, because closing any
descriptor of a file drops the POSIX locks the process holds on it.) That lock is what lets a restarted
engine release the leases of its dead predecessor at once instead of waiting for them to expire.

Faults of the disk: a write that fails because the disk is full (or the file cannot be written) is rolled
back whole and raises `StoreFullError` / `StoreUnavailableError` (503 at the API) with a clear message; what
was committed before stays intact, and writes succeed again once space is freed.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from stepflow.errors import (
    ConfigError,
    SchemaVersionError,
    StoreConflictError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
)
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
        self.engine_lock = self  # one engine per database file (acquire_engine_lock)
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None
        self._conn: _Connection | None = None
        self._lock_fd: int | None = None
        self._lock_identity: tuple[int, int] = (0, 0)
        self._wal_checkpoints: _WalCheckpointThread | None = None

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
        self._wal_checkpoints = _WalCheckpointThread(self.path)
        self._wal_checkpoints.start()

    async def close(self) -> None:
        if self._wal_checkpoints is not None:
            self._wal_checkpoints.stop()
            self._wal_checkpoints = None
        if self._db is not None:
            self._db.close()
            self._db = None
            self._conn = None
        self._release_engine_lock()

    def acquire_engine_lock(self) -> None:
        """Make this process the only engine on the file, whatever path reaches it (see module docstring).

        Call it before `open()`: a refused engine must not even open the database (through a hard link SQLite
        would use another WAL file than the running engine, and both would write)."""
        if self._lock_fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            identity = _file_identity(os.stat(self.path))
        except FileNotFoundError:
            identity = None
        owner = _ENGINE_LOCKS.get(identity) if identity is not None else None
        if owner is not None and owner is not self:
            raise self._already_running(str(os.getpid()))  # another engine of this very process
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(fd) or "unknown"
            os.close(fd)
            raise self._already_running(holder) from None
        self._lock_fd = fd
        self._lock_identity = _file_identity(os.fstat(fd))
        _ENGINE_LOCKS[self._lock_identity] = self

    def _already_running(self, holder: str) -> ConfigError:
        return ConfigError(f"another stepflow engine (pid {holder}) is already running on {self.path}; "
                           "stop it, or point this one at another database")

    def _release_engine_lock(self) -> None:
        # only after every SQLite connection of this store is closed (see module docstring)
        if self._lock_fd is not None:
            if _ENGINE_LOCKS.get(self._lock_identity) is self:
                del _ENGINE_LOCKS[self._lock_identity]
            os.close(self._lock_fd)
            self._lock_fd = None

    def _fault(self, exc: sqlite3.Error) -> StoreError:
        """The stepflow error for a driver error: no sqlite3 error crosses the store boundary."""
        name = str(getattr(exc, "sqlite_errorname", "") or "")
        if name == "SQLITE_FULL" or "disk is full" in str(exc):
            return StoreFullError(f"the disk holding the SQLite database {self.path} is full ({exc}); nothing was "
                                  "written. Everything stored before is intact; free disk space and try again")
        if name.startswith(("SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
            return StoreUnavailableError(f"the SQLite database {self.path} cannot be used right now ({exc}); "
                                         "nothing was written. Try again")
        if isinstance(exc, sqlite3.IntegrityError):
            return StoreConflictError(f"the write conflicts with what is stored ({exc}); nothing was written")
        return StoreError(f"SQLite failed on {self.path}: {exc}")

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
        db = conn.db
        started = time.perf_counter()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = await body(conn)
                db.execute("COMMIT")
                self.hooks.transaction_done(time.perf_counter() - started)
            except BaseException:
                # SQLite may already have rolled back on its own (a full disk, an I/O error), and a failed
                # COMMIT may leave the transaction open: either way, none of it stays and the next BEGIN works
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc
        return result

    async def _read(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            return await body(self._connection())
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc

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


_ENGINE_LOCKS: dict[tuple[int, int], SqliteStore] = {}  # (device, inode) -> the engine store of this process


def _file_identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _flock_holder(fd: int) -> str | None:
    """The pid holding a flock() on the file open at `fd`, from /proc/locks (Linux); None when unknown."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    inode_only = None
    for line in lines:
        fields = [f for f in line.split() if f != "->"]
        if len(fields) < 6 or fields[1] != "FLOCK" or line.split()[1] == "->":
            continue  # not a flock, or a waiter rather than the holder
        pid, where = fields[4], fields[5]
        if where == wanted:
            return pid
        if where.rsplit(":", 1)[-1] == str(st.st_ino):
            inode_only = pid  # some filesystems report another device number
    return inode_only


class _WalCheckpointThread(threading.Thread):
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
                self._checkpoint(db)
            self._checkpoint(db)
        finally:
            db.close()

    @staticmethod
    def _checkpoint(db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # busy, locked, or the disk is full: the WAL keeps everything, a later round will do it

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
