"""Plain records that cross the Store boundary. The store speaks only these; no backend types leak out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class RunStatus(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def title(self) -> str:
        """The v1 spelling: `Completed`, `Failed`, …"""
        return self.value.capitalize()


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(str, Enum):
    SCHEDULED = "scheduled"   # waiting for its time (first attempt, a `wait`, or a retry backoff)
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"       # no incoming edge fired (its `if` was false, or its parents were skipped)
    CANCELLED = "cancelled"   # the run was cancelled before this step could run

    @property
    def is_settled(self) -> bool:
        return self in (StepStatus.COMPLETED, StepStatus.SKIPPED)


@dataclass(slots=True)
class EventRecord:
    id: str
    name: str
    data: dict[str, Any]
    ts: int
    received_at: int
    user: dict[str, Any] | None = None
    v: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as steps and the API see it."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "data": self.data, "ts": self.ts}
        if self.user is not None:
            out["user"] = self.user
        if self.v is not None:
            out["v"] = self.v
        return out


@dataclass(slots=True)
class RunRecord:
    id: str
    function_id: str
    function_version: int
    app_id: str
    event_id: str | None
    status: RunStatus
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class StepRecord:
    run_id: str
    step_id: str
    status: StepStatus
    attempts: int = 0
    scheduled_at: int | None = None
    started_at: int | None = None
    ended_at: int | None = None
    output: dict[str, Any] | None = None     # the stored Response: {"status", "body"}
    error: dict[str, Any] | None = None      # the last error: {"code", "message", ...}
    seq: int = 0                             # completion order within the run (1, 2, …); 0 = not completed
    logs: str | None = None


@dataclass(slots=True)
class NewJob:
    """A step to execute, no earlier than `available_at` (ms)."""

    step_id: str
    available_at: int


@dataclass(slots=True)
class NewRun:
    run_id: str
    function_id: str
    function_version: int
    app_id: str
    jobs: list[NewJob]
    status: RunStatus = RunStatus.QUEUED


@dataclass(slots=True)
class Job:
    """A claimed unit of work. `token` proves the claim is still ours when the result is recorded."""

    id: int
    run_id: str
    step_id: str
    token: int
    function_id: str
    function_version: int
    app_id: str
    attempt: int          # 0-based attempt number being executed now


@dataclass(slots=True)
class RunState:
    """Everything the planner needs to decide what happens next in a run, read inside one transaction."""

    run: RunRecord
    event: dict[str, Any] | None
    steps: dict[str, StepRecord]

    def completed_outputs(self) -> dict[str, Any]:
        return {sid: s.output for sid, s in self.steps.items() if s.status is StepStatus.COMPLETED}


@dataclass(slots=True)
class StepUpdate:
    """What an attempt produced: stored on the step row."""

    status: StepStatus
    ended_at: int
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    logs: str | None = None


@dataclass(slots=True)
class Advance:
    """The planner's decision after a step settled: new jobs, skipped steps, and maybe the run's end."""

    jobs: list[NewJob] = field(default_factory=list)
    skipped: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # step id -> reason
    finish: RunStatus | None = None
    output: Any = None
    error: dict[str, Any] | None = None
