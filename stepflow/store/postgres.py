"""PostgresStore: the scale-out backend. Many engine and API processes, on many machines, share one database.

- Work is claimed with leases under `FOR UPDATE SKIP LOCKED`: workers never wait on each other's rows, and a
  worker that dies simply stops renewing its leases, so its jobs fall due again for the others.
- Decisions about a run happen under that run's row lock, in one transaction with the data they rest on.
- `LISTEN/NOTIFY` wakes idle workers when work is added and API processes when a run ends (for `?wait=`);
  polling remains the guarantee, so a lost notification costs at most one poll interval.
- A transaction that meets a deadlock or serialization failure is run again (bodies are pure functions of the
  database state).
- The database going away (restart, failover, a broken connection) is survived: pooled connections are
  replaced as they are next used, and an operation that fails before its COMMIT was sent is run again on a
  fresh connection (briefly); after that, or when a COMMIT's answer was lost, it raises
  `StoreUnavailableError` (503 at the API, with a message; never a driver traceback). The engine waits for the
  database and carries on; the LISTEN connection reconnects by itself.

URL: `postgresql://user@host:5432/db`, optionally `?schema=NAME` (tables live in that schema) and
`&pool_size=N` (connections per process, default 10). The schema is versioned; run `stepflow migrate`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stepflow.errors import ConfigError, SchemaVersionError, StoreConflictError, StoreError, StoreUnavailableError
from stepflow.store.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from stepflow.store.sql import Conn, Row, SqlStore

T = TypeVar("T")
log = logging.getLogger("stepflow.store")
JOBS_CHANNEL = "stepflow_jobs"
RUNS_CHANNEL = "stepflow_runs"
_PLACEHOLDER = re.compile(r"\?")
_RETRYABLE = ("40001", "40P01")  # serialization_failure, deadlock_detected
MIGRATION_LOCK = 727_391  # pg_advisory_xact_lock key: one migrator at a time
CONNECT_TIMEOUT = 10.0    # seconds to establish a connection
UNAVAILABLE_RETRIES = (0.05, 0.25)  # pauses before running an operation again on a fresh connection


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - the postgres extra is not installed
        raise ConfigError("PostgreSQL needs asyncpg: in the stepflow checkout, pip install -e '.[postgres]'") from exc
    return asyncpg


class _Connection:
    """The `Conn` protocol over an asyncpg connection: `?` placeholders become `$1, $2, …`."""

    __slots__ = ("raw",)
    _sql_cache: dict[str, str] = {}

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    @classmethod
    def _sql(cls, sql: str) -> str:
        converted = cls._sql_cache.get(sql)
        if converted is None:
            counter = iter(range(1, 10_000))
            converted = cls._sql_cache[sql] = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
        return converted

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self.raw.execute(self._sql(sql), *args)
        last = str(status).rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self.raw.fetch(self._sql(sql), *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self.raw.fetchrow(self._sql(sql), *args)  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.raw.fetchval(self._sql(sql), *args)


def parse_url(url: str) -> tuple[str, str | None, int]:
    """(asyncpg DSN, schema, pool size): stepflow's own query parameters are taken out of the URL."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    schema = params.pop("schema", None)
    try:
        pool_size = int(params.pop("pool_size", "10"))
    except ValueError:
        raise ConfigError(f"pool_size in {url!r} must be a number") from None
    if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
        raise ConfigError(f"invalid schema name {schema!r}")
    dsn = urlunsplit((parts.scheme.replace("postgres+asyncpg", "postgresql"), parts.netloc, parts.path,
                      urlencode(params), parts.fragment))
    return dsn, schema, pool_size


class PostgresStore(SqlStore):
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int | None = None) -> None:
        super().__init__()
        self.notifications = self  # LISTEN/NOTIFY wake-ups from other processes (subscribe)
        self.url = url
        self._dsn, self.schema, size = parse_url(url)
        self._pool_size = pool_size or size
        self._pool: Any = None
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._subscribers: dict[str, list[Callable[[str], None]]] = {JOBS_CHANNEL: [], RUNS_CHANNEL: []}

    # --- lifecycle ----------------------------------------------------------------------------------------

    def _server_settings(self) -> dict[str, str]:
        return {"search_path": self.schema} if self.schema else {}

    async def open(self) -> None:
        if self._pool is not None:
            return
        asyncpg = _asyncpg()
        try:
            # reset=no-op: pooled connections keep no session state (every use is one finished transaction,
            # LISTEN has its own connection), so the default reset round trip on each release is pure cost
            # min_size=0: connections are made when needed, so a database that went away is not reconnected
            # to in the background (with a logged traceback per try) but by the next operation
            self._pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=self._pool_size,
                                                   server_settings=self._server_settings(), reset=_no_reset,
                                                   timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            if _is_disconnect(asyncpg, exc) or isinstance(exc, asyncpg.PostgresError):
                raise StoreUnavailableError(f"cannot connect to PostgreSQL at {_safe(self.url)}: "
                                            f"{_describe(exc)}") from exc
            raise
        try:
            current = await self.schema_version()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, Exception) and _is_disconnect(asyncpg, exc):
                raise StoreUnavailableError(f"cannot connect to PostgreSQL at {_safe(self.url)}: "
                                            f"{_describe(exc)}") from exc
            raise
        if current != SCHEMA_VERSION:
            await self.close()
            if current > SCHEMA_VERSION:
                raise SchemaVersionError(f"the database {_safe(self.url)} has schema version {current}, newer than "
                                         f"this stepflow ({SCHEMA_VERSION}); upgrade stepflow")
            raise SchemaVersionError(
                f"the database {_safe(self.url)} has schema version {current}; this stepflow needs version "
                f"{SCHEMA_VERSION}. Run: stepflow migrate --db '{_safe(self.url)}'")

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            self._listen_task = None
        if self._listener is not None:
            try:
                await self._listener.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def schema_version(self) -> int:
        async with self._acquire() as raw:
            if self.schema:
                await raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            exists = await raw.fetchval("SELECT to_regclass('meta') IS NOT NULL")
            if not exists:
                return 0
            value = await raw.fetchval("SELECT value FROM meta WHERE key='schema_version'")
            return int(value) if value is not None else 0

    async def migrate(self) -> tuple[int, int]:
        """Bring the schema up to date (one migrator at a time); returns (from version, to version)."""
        asyncpg = _asyncpg()
        try:
            raw = await asyncpg.connect(self._dsn, server_settings=self._server_settings())
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {_safe(self.url)}: {exc}") from exc
        try:
            if self.schema:
                await raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            async with raw.transaction():
                await raw.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await raw.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                value = await raw.fetchval("SELECT value FROM meta WHERE key='schema_version'")
                start = int(value) if value is not None else 0
                if start > SCHEMA_VERSION:
                    raise SchemaVersionError(f"the database has schema version {start}, newer than this stepflow "
                                             f"({SCHEMA_VERSION}); upgrade stepflow")
                for version in range(start + 1, SCHEMA_VERSION + 1):
                    await raw.execute(MIGRATIONS[version - 1])
                    await raw.execute("INSERT INTO meta (key, value) VALUES ('schema_version', $1) "
                                      "ON CONFLICT (key) DO UPDATE SET value=excluded.value", str(version))
            return start, SCHEMA_VERSION
        finally:
            await raw.close()

    def _acquire(self) -> Any:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool.acquire()

    # --- SqlStore hooks -----------------------------------------------------------------------------------

    async def _transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        asyncpg = _asyncpg()
        lost = 0
        for attempt in range(6):
            committing = False
            try:
                async with self._acquire() as raw:
                    try:
                        started = time.perf_counter()
                        transaction = raw.transaction()
                        await transaction.start()
                        try:
                            result = await body(_Connection(raw))
                        except BaseException:
                            try:
                                await transaction.rollback()
                            except Exception:  # noqa: BLE001 - the connection broke: the server rolls back
                                pass
                            raise
                        committing = True
                        await transaction.commit()
                        self.hooks.transaction_done(time.perf_counter() - started)
                        return result
                    except Exception as exc:
                        if _is_disconnect(asyncpg, exc):
                            _discard(raw)  # never back into the pool half-broken
                        raise
            except asyncpg.PostgresError as exc:
                if _is_disconnect(asyncpg, exc):
                    lost = await self._after_disconnect(exc, lost, committing)
                    continue
                if getattr(exc, "sqlstate", None) not in _RETRYABLE or attempt == 5:
                    raise _mapped(exc) from exc
                await asyncio.sleep(0.005 * (attempt + 1))
            except Exception as exc:
                if not _is_disconnect(asyncpg, exc):
                    raise
                lost = await self._after_disconnect(exc, lost, committing)
        raise StoreUnavailableError(f"PostgreSQL at {_safe(self.url)} keeps failing this operation")

    async def _after_disconnect(self, exc: BaseException, lost: int, committing: bool) -> int:
        """The connection failed: wait a moment and let the caller run the operation again on a fresh one —
        unless its COMMIT was already sent (it may have been applied) or the database stays unreachable."""
        if committing:
            raise StoreUnavailableError(
                f"the connection to PostgreSQL at {_safe(self.url)} was lost while committing ({_describe(exc)}); "
                "the operation may or may not have been applied") from exc
        if lost >= len(UNAVAILABLE_RETRIES):
            raise StoreUnavailableError(f"PostgreSQL at {_safe(self.url)} is unavailable ({_describe(exc)}); "
                                        "try again shortly") from exc
        await asyncio.sleep(UNAVAILABLE_RETRIES[lost])
        return lost + 1

    async def _read(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        asyncpg = _asyncpg()
        lost = 0
        while True:
            try:
                async with self._acquire() as raw:
                    try:
                        return await body(_Connection(raw))
                    except Exception as exc:
                        if _is_disconnect(asyncpg, exc):
                            _discard(raw)
                        raise
            except Exception as exc:
                if not _is_disconnect(asyncpg, exc):
                    raise _mapped(exc) from exc if isinstance(exc, asyncpg.PostgresError) else exc
                lost = await self._after_disconnect(exc, lost, False)

    async def _lock_run(self, c: Conn, run_id: str) -> None:
        await c.execute("SELECT 1 FROM runs WHERE id=? FOR UPDATE", run_id)

    async def _lock_key(self, c: Conn, key: str) -> None:
        # a transaction-scoped advisory lock on the key's hash: keys need no row to lock, and a hash collision
        # only serializes two keys that did not need it
        await c.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", key)

    async def _lock_keys(self, c: Conn, keys: list[str]) -> None:
        # one round trip; the rows come from the ordered subquery, so the locks are taken in the keys' order
        await c.execute("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM "
                        "(SELECT k FROM unnest(?::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n) AS ordered", keys)

    async def _work_added(self, c: Conn) -> None:
        await c.execute("SELECT pg_notify(?, '')", JOBS_CHANNEL)

    # --- notifications ------------------------------------------------------------------------------------

    async def subscribe(self, on_work: Callable[[], None], on_run_ended: Callable[[str], None]) -> None:
        """Wake-up hints from other processes: new work, and runs that ended (sent in the same transaction)."""
        self._subscribers[JOBS_CHANNEL].append(lambda _payload: on_work())
        self._subscribers[RUNS_CHANNEL].append(on_run_ended)
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen(), name="stepflow-pg-listen")

    async def _listen(self) -> None:
        asyncpg = _asyncpg()

        def dispatch(_conn: Any, _pid: int, channel: str, payload: str) -> None:
            for callback in self._subscribers.get(channel, []):
                callback(payload)

        down_since: float | None = None
        while True:
            try:
                self._listener = await asyncpg.connect(self._dsn, server_settings=self._server_settings(),
                                                       timeout=CONNECT_TIMEOUT)
                for channel in self._subscribers:
                    await self._listener.add_listener(channel, dispatch)
                lost = asyncio.get_running_loop().create_future()
                self._listener.add_termination_listener(
                    lambda _c, lost=lost: None if lost.done() else lost.set_result(None))
                if down_since is not None:
                    log.warning("PostgreSQL LISTEN connection re-established")
                    down_since = None
                    for callback in self._subscribers[JOBS_CHANNEL]:
                        callback("")  # notifications sent meanwhile are lost: look for work now
                await lost
                raise ConnectionError("the connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening; polling covers the gap
                if down_since is None:
                    down_since = asyncio.get_running_loop().time()
                    log.warning("PostgreSQL LISTEN connection lost (%s); reconnecting every second",
                                _describe(exc))
            finally:
                listener, self._listener = self._listener, None
                if listener is not None and not listener.is_closed():
                    listener.terminate()
            await asyncio.sleep(1.0)

    async def _finish_run(self, c: Conn, run_id: str, status: Any, output: Any, error: Any, now: int) -> bool:
        ended = await super()._finish_run(c, run_id, status, output, error, now)
        if ended:
            # tell API processes waiting on this run (GET /v1/runs/{id}?wait=) — delivered when this commits
            await c.execute("SELECT pg_notify(?, ?)", RUNS_CHANNEL, run_id)
        return ended


async def _no_reset(connection: Any) -> None:
    return None


def _is_disconnect(asyncpg: Any, exc: BaseException) -> bool:
    """The database is unreachable or the connection broke (as opposed to an error of the statement)."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return False  # 57014: a statement timeout or a cancel request, not the connection
    if isinstance(exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError,
                        asyncpg.TooManyConnectionsError)):
        return True  # refused, reset, timed out; 08xxx; admin shutdown, crash shutdown, cannot connect now
    if isinstance(exc, asyncpg.InternalClientError):
        return True  # the protocol state broke with the connection ("cannot switch to state …")
    # "connection is closed"; "… has been released back to the pool": asyncpg detaches a pooled connection
    # that broke under an operation
    return isinstance(exc, asyncpg.InterfaceError) and ("closed" in str(exc) or "released back" in str(exc))


def _discard(raw: Any) -> None:
    """Close a broken pooled connection now (asyncpg may already have detached it: then nothing to do)."""
    try:
        raw.terminate()
    except Exception:  # noqa: BLE001
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _mapped(exc: Exception) -> StoreError:
    """The stepflow error for a PostgreSQL error that is not a lost connection: no asyncpg error crosses the
    store boundary. A constraint violation (SQLSTATE class 23) is a conflict (409); anything else a store error."""
    state = str(getattr(exc, "sqlstate", "") or "")
    if state.startswith("23"):
        return StoreConflictError(f"the write conflicts with what is stored ({exc}); nothing was written")
    return StoreError(f"PostgreSQL refused the operation ({state or type(exc).__name__}: {exc})")
