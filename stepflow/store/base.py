"""The Store protocol: the domain operations the engine and the API need, each one transaction.

Backends: `SqliteStore` (embedded default) and, for scale-out, a PostgreSQL store with the same contract.
Callbacks passed to the write operations (`plan`, `advance`) are pure functions evaluated *inside* the
transaction, so a decision and the state it was made on can never diverge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from stepflow.store.records import (
    Advance,
    EventRecord,
    Job,
    NewEvent,
    NewRun,
    RunRecord,
    RunState,
    RunStatus,
    StepRecord,
    StepUpdate,
)

PlanRuns = Callable[[EventRecord], list[NewRun]]
AdvanceRun = Callable[[RunState], Advance]
# (expression or None, the waiting run's trigger event, the candidate event) -> does it resolve the pause?
PauseMatcher = Callable[[str | None, dict[str, Any], dict[str, Any]], bool]


class Store(Protocol):
    url: str
    pause_matcher: PauseMatcher
    on_run_ended: Callable[[str], None]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # --- functions ----------------------------------------------------------------------------------------
    async def save_function(self, function_id: str, app_id: str, config: dict[str, Any], now: int = 0) -> int:
        """Store a definition; returns its version (unchanged definitions keep their version)."""
        ...

    async def get_function(self, function_id: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        ...

    async def list_functions(self) -> list[tuple[int, dict[str, Any]]]: ...

    async def remove_function(self, function_id: str) -> None: ...

    # --- events and runs ----------------------------------------------------------------------------------
    async def ingest_events(self, events: list[EventRecord], plan: PlanRuns) -> list[str]:
        """Store new events and the runs `plan` makes for each, all in one transaction.

        An event whose id is already stored is a duplicate: nothing is written for it and `plan` is not
        called. Returns the ids in order.
        """
        ...

    async def fire_cron(self, function_id: str, tick_at: int, new_event: NewEvent) -> bool:
        """Store one cron tick's event and runs, exactly once across processes. False if already fired."""
        ...

    async def get_event(self, event_id: str) -> EventRecord | None: ...

    async def get_event_runs(self, event_id: str) -> list[RunRecord]: ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def get_run_steps(self, run_id: str) -> list[StepRecord]: ...

    async def list_runs(self, *, status: RunStatus | None = None, function_id: str | None = None,
                        cursor: str | None = None, limit: int = 50) -> list[RunRecord]: ...

    async def cancel_run(self, run_id: str, now: int) -> RunRecord | None:
        """Cancel a run that has not ended: remove its pending work. Returns the run as it now is."""
        ...

    # --- work queue ---------------------------------------------------------------------------------------
    async def claim_jobs(self, worker_id: str, limit: int, lease_ms: int, now: int) -> list[Job]:
        """Lease up to `limit` due jobs, mark their steps running and their runs started."""
        ...

    async def renew_leases(self, worker_id: str, until: int, job_ids: Sequence[int] | None = None) -> int: ...

    async def release_leases(self, worker_id: str | None, now: int) -> int: ...

    async def next_due_at(self) -> int | None:
        """When the earliest job becomes due (ms), or None when there is no work at all."""
        ...

    async def load_run_state(self, run_id: str) -> RunState | None: ...

    async def settle_job(self, job: Job, update: StepUpdate | None, advance: AdvanceRun | None,
                         now: int) -> RunRecord | None:
        """Record an attempt's final result for the job's step, remove the job and apply `advance`.

        Returns the run after the transaction, or None when the job was no longer ours; then nothing advances.
        If the run was cancelled meanwhile, the result is kept on the step for the record; if the lease was lost
        (another worker took the step over), the late result is dropped: the step shows the other attempt.
        """
        ...

    async def advance_run(self, run_id: str, advance: AdvanceRun, now: int) -> RunRecord | None:
        """Apply a decision to a run outside any job (a durable endpoint's checkpoint), under its lock."""
        ...

    async def create_run(self, event: EventRecord, run: NewRun, started_at: int) -> bool:
        """Store an event and a run that is already executing (a durable endpoint's request)."""
        ...

    async def find_idempotent_run(self, function_id: str, key: str, now: int) -> RunRecord | None: ...

    async def retry_job(self, job: Job, update: StepUpdate, available_at: int) -> bool:
        """Record a failed attempt and put the job back for `available_at`. False when no longer ours (then the
        step is only touched if the run ended: it shows cancelled)."""
        ...
