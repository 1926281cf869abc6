"""The store boundary: the domain operations the engine and the API need, each one transaction.

Backends: `SqliteStore` (embedded default) and, for scale-out, `PostgresStore`, both `Store`s with the same
contract (tests/store/ is that contract, run on both). Callbacks passed to the write operations (`plan`,
`advance`) are pure functions evaluated *inside* the transaction, so a decision and the state it was made on
can never diverge. Driver errors do not cross this boundary: a backend raises `StoreUnavailableError` (503),
`StoreError` or another `StepflowError`.

What only some backends can do is declared, not probed: `engine_lock` (SQLite: one engine per file) and
`notifications` (PostgreSQL: wake-ups from other processes) are None where the backend has no such thing.
The engine gives the store what it needs from the engine — CEL evaluation for pauses, and a callback for runs
that end — once, with `attach(StoreHooks(...))`, before `open()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stepflow.store.records import (
    Advance,
    EventRecord,
    Job,
    NewEvent,
    NewRun,
    OperationRecord,
    RunRecord,
    RunState,
    RunStatus,
    SpanRecord,
    StepRecord,
    StepUpdate,
)

PlanRuns = Callable[[EventRecord], list[NewRun]]
AdvanceRun = Callable[[RunState], Advance]
# (expression or None, the waiting run's trigger event, the candidate event) -> does it resolve the pause?
PauseMatcher = Callable[[str | None, dict[str, Any], dict[str, Any]], bool]


def _no_expression_matches(expression: str | None, run_event: dict[str, Any], candidate: dict[str, Any]) -> bool:
    return expression is None  # without the engine's CEL evaluator, only unconditional pauses match


@dataclass(slots=True)
class StoreHooks:
    """What the store needs from the engine, given once by `Store.attach`."""

    pause_matcher: PauseMatcher = _no_expression_matches   # does this event resolve this pause?
    run_ended: Callable[[str], None] = field(default=lambda run_id: None)  # a run ended in a transaction
    # for metrics: a run ended (function id, status, ms since its creation); a transaction committed (seconds)
    run_finished: Callable[[str, str, int], None] = field(default=lambda function_id, status, ms: None)
    transaction_done: Callable[[float], None] = field(default=lambda seconds: None)


class EngineLock(Protocol):
    """The backend allows one engine per database (SQLite)."""

    def acquire_engine_lock(self) -> None:
        """Become the only engine, before `open()`; raises ConfigError naming the holder if another engine is."""
        ...


class Notifications(Protocol):
    """The backend tells a process about other processes' work (PostgreSQL LISTEN/NOTIFY)."""

    async def subscribe(self, on_work: Callable[[], None], on_run_ended: Callable[[str], None]) -> None: ...


class Store(ABC):
    url: str
    hooks: StoreHooks
    engine_lock: EngineLock | None = None          # declared by the backends that have one
    notifications: Notifications | None = None     # idem

    def attach(self, hooks: StoreHooks) -> None:
        """Wire the engine's evaluator and callback in (before `open()`)."""
        self.hooks = hooks

    async def migrate(self) -> Any:
        """Bring the schema up to date. Backends that migrate when they open (SQLite) have nothing to do."""
        return None

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # --- functions ----------------------------------------------------------------------------------------
    @abstractmethod
    async def save_function(self, function_id: str, app_id: str, config: dict[str, Any], now: int = 0) -> int:
        """Store a definition; returns its version (unchanged definitions keep their version)."""
        ...

    @abstractmethod
    async def get_function(self, function_id: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        ...

    @abstractmethod
    async def list_functions(self) -> list[tuple[int, dict[str, Any]]]: ...

    @abstractmethod
    async def remove_function(self, function_id: str) -> None: ...

    # --- events and runs ----------------------------------------------------------------------------------
    @abstractmethod
    async def ingest_events(self, events: list[EventRecord], plan: PlanRuns) -> list[str]:
        """Store new events and the runs `plan` makes for each, all in one transaction.

        An event whose id is already stored is a duplicate: nothing is written for it and `plan` is not
        called. Returns the ids in order.
        """
        ...

    @abstractmethod
    async def fire_cron(self, function_id: str, tick_at: int, new_event: NewEvent) -> bool:
        """Store one cron tick's event and runs, exactly once across processes. False if already fired."""
        ...

    @abstractmethod
    async def get_event(self, event_id: str) -> EventRecord | None: ...

    @abstractmethod
    async def get_events(self, event_ids: Sequence[str]) -> dict[str, EventRecord]:
        """The stored events among these ids, by id (unknown ids are left out)."""
        ...

    @abstractmethod
    async def get_event_runs(self, event_id: str) -> list[RunRecord]: ...

    @abstractmethod
    async def get_traces(self, run_ids: Sequence[str]) -> list[tuple[RunRecord, list[SpanRecord]]]:
        """The runs among these ids, each with its spans (unknown ids are left out)."""
        ...

    @abstractmethod
    async def get_run_spans(self, run_id: str) -> list[SpanRecord]:
        """The spans kept with the run (step attempts, sleeps, waits), by start time."""
        ...

    @abstractmethod
    async def get_event_skips(self, event_id: str) -> list[dict[str, Any]]:
        """The functions this event started no run of because of their flow control, and why:
        `[{"function_id", "reason" (rate_limit, debounce, singleton), "message", "at"}]`."""
        ...

    @abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    @abstractmethod
    async def get_run_steps(self, run_id: str) -> list[StepRecord]: ...

    # --- paused functions -----------------------------------------------------------------------------------
    @abstractmethod
    async def pause_function(self, function_id: str, now: int) -> tuple[int, int]:
        """Pause: new runs are stored PAUSED, runs not ended become PAUSED and execute nothing more (a step
        executing finishes and is stored). Returns (paused since, runs paused now)."""
        ...

    @abstractmethod
    async def resume_function(self, function_id: str, now: int, *, cancel_paused: bool) -> list[str]:
        """Resume: paused runs go on where they were (or are cancelled). Returns their ids."""
        ...

    @abstractmethod
    async def paused_functions(self) -> dict[str, int]:
        """Paused function ids, with when they were paused (ms)."""
        ...

    # --- bulk operations ------------------------------------------------------------------------------------
    @abstractmethod
    async def create_operation(self, op: OperationRecord) -> OperationRecord:
        """Store a new operation, its `total` counted in the same transaction."""
        ...

    @abstractmethod
    async def get_operation(self, operation_id: str) -> OperationRecord | None: ...

    @abstractmethod
    async def claim_operation(self, worker_id: str, now: int, lease_ms: int) -> OperationRecord | None:
        """Lease a running operation nobody holds (or this worker already holds)."""
        ...

    @abstractmethod
    async def operation_batch(self, op: OperationRecord,
                              limit: int) -> list[tuple[str, RunStatus, EventRecord | None]]: ...

    @abstractmethod
    async def save_operation(self, op: OperationRecord, worker_id: str, now: int, lease_ms: int, *,
                             done: bool, runs: Sequence[tuple[NewRun, str]] = (), cancel: Sequence[str] = ()) -> bool:
        """Save progress and extend the lease, storing `runs` (run, event id) and cancelling the runs `cancel`
        in the same transaction (adding those it really ended to `op.succeeded` and `op.processed`); False (and
        nothing stored) when this worker no longer holds the operation."""
        ...

    @abstractmethod
    async def replay_batch(self, op: OperationRecord, limit: int) -> list[tuple[str, EventRecord, str | None]]: ...

    @abstractmethod
    async def operation_run_counts(self, operation_id: str) -> dict[RunStatus, int]:
        """The runs a replay started, by status."""
        ...

    @abstractmethod
    async def stop_operation(self, operation_id: str, now: int) -> OperationRecord | None: ...

    @abstractmethod
    async def list_events(self, *, name: str | None = None, received_after: int | None = None,
                          received_before: int | None = None, cursor: str | None = None,
                          limit: int = 50) -> list[EventRecord] | None:
        """Newest received first (`received_*`: ms, after inclusive, before exclusive); after the event `cursor`.
        None when `cursor` names no stored event."""
        ...

    @abstractmethod
    async def list_runs(self, *, status: RunStatus | None = None, function_id: str | None = None,
                        event_name: str | None = None, original_run_id: str | None = None,
                        created_from: int | None = None, created_until: int | None = None,
                        cursor: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Newest first; every filter given must hold (`created_*`: ms, from inclusive, until exclusive)."""
        ...

    @abstractmethod
    async def cancel_run(self, run_id: str, now: int) -> RunRecord | None:
        """Cancel a run that has not ended: remove its pending work. Returns the run as it now is."""
        ...

    # --- work queue ---------------------------------------------------------------------------------------
    @abstractmethod
    async def claim_jobs(self, worker_id: str, limit: int, lease_ms: int, now: int) -> list[Job]:
        """Lease up to `limit` due jobs, mark their steps running and their runs started."""
        ...

    @abstractmethod
    async def renew_leases(self, worker_id: str, until: int, job_ids: Sequence[int] | None = None) -> int: ...

    @abstractmethod
    async def release_leases(self, worker_id: str | None, now: int) -> int: ...

    @abstractmethod
    async def run_waiting(self, run_id: str, now: int) -> dict[str, dict[str, Any]]:
        """Why the run's work waits, by step id ("" for a code function's call): a concurrency slot, a throttle
        or a debounce (store/flow.py `waiting_reasons`). Empty when nothing of it waits on flow control."""
        ...

    @abstractmethod
    async def queue_stats(self, now: int) -> dict[str, Any]:
        """The shared queue, for metrics: `{"due", "executing", "oldest_due_age_ms", "waiting": {control: n}}`."""
        ...

    @abstractmethod
    async def wake_waiting(self, now: int) -> int:
        """Make due the jobs waiting for a concurrency slot that has room (a lapsed lease frees one silently).
        Returns how many were woken."""
        ...

    @abstractmethod
    async def next_due_at(self) -> int | None:
        """When the earliest job becomes due (ms), or None when there is no work at all."""
        ...

    @abstractmethod
    async def load_run_state(self, run_id: str) -> RunState | None: ...

    @abstractmethod
    async def settle_job(self, job: Job, update: StepUpdate | None, advance: AdvanceRun | None,
                         now: int) -> RunRecord | None:
        """Record an attempt's final result for the job's step, remove the job and apply `advance`.

        Returns the run after the transaction, or None when the job was no longer ours; then nothing advances.
        If the run was cancelled meanwhile, the result is kept on the step for the record; if the lease was lost
        (another worker took the step over), the late result is dropped: the step shows the other attempt.
        """
        ...

    @abstractmethod
    async def advance_run(self, run_id: str, advance: AdvanceRun, now: int) -> RunRecord | None:
        """Apply a decision to a run outside any job (a durable endpoint's checkpoint), under its lock."""
        ...

    @abstractmethod
    async def add_run(self, run: NewRun, event_id: str | None, now: int) -> None:
        """Store a new run of an event already stored (a rerun), with the step results it keeps, and queue it."""
        ...

    @abstractmethod
    async def create_run(self, event: EventRecord, run: NewRun, started_at: int) -> bool:
        """Store an event and a run that is already executing (a durable endpoint's request)."""
        ...

    @abstractmethod
    async def find_idempotent_run(self, function_id: str, key: str, now: int) -> RunRecord | None: ...

    @abstractmethod
    async def retry_job(self, job: Job, update: StepUpdate, available_at: int) -> bool:
        """Record a failed attempt and put the job back for `available_at`. False when no longer ours (then the
        step is only touched if the run ended: it shows cancelled)."""
        ...
