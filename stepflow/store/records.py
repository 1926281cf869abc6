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
    def v1_name(self) -> str:
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
    original_run_id: str | None = None   # a rerun: the run it repeats
    trace_id: str | None = None          # its trace (32 hex digits); steps carry it in `traceparent`
    parent_span_id: str | None = None    # the sender's span, when the event came with a `traceparent`


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
    name: str | None = None                  # code functions: the user's step id (step_id is its hash)
    kind: str | None = None                  # code functions: run, sleep, wait, invoke, send, runstep

    @property
    def display_name(self) -> str:
        return self.name or self.step_id


class JobKind(str, Enum):
    STEP = "step"          # a workflow step, or a code function's RunStep: run it on its runtime
    CALL = "call"          # call a code function (payload: {"target": hashed step id} for a planned step)
    SLEEP = "sleep"        # a code function's sleep ends: memoize it and call the function again
    TIMEOUT = "timeout"    # a wait_for_event / invoke gave up waiting: memoize null and call again
    RUN_TIMEOUT = "run_timeout"  # the function's `timeouts` (start / finish) ran out: cancel the run


@dataclass(slots=True)
class NewJob:
    """Work to do no earlier than `available_at` (ms). `step_id` is the step it concerns ("" for calls)."""

    step_id: str
    available_at: int
    kind: JobKind = JobKind.STEP
    payload: dict[str, Any] | None = None
    # steps shown as scheduled until the job runs; calls and timeouts have no step row of their own
    step_row: bool = True
    name: str | None = None
    step_kind: str | None = None
    attempt: int = 0


# a run's concurrency slots and priority, as its jobs carry them: (slot1, limit1, slot2, limit2, priority ms)
RunSlots = tuple[str | None, int | None, str | None, int | None, int]


@dataclass(slots=True)
class RunFlow:
    """What flow control asks of a new run, worked out from its function and event (engine/runs.py); the store
    carries it out in the transaction that stores the run (store/flow.py)."""

    slots: list[tuple[str, int]] = field(default_factory=list)  # concurrency: (slot, limit), at most two
    priority_ms: int = 0                                # immediate jobs go this much ahead (behind if negative)
    throttle: tuple[str, int, int] | None = None        # (key, emission interval ms, burst tolerance ms)
    rate_limit: tuple[str, int, int] | None = None      # (key, emission interval ms, burst tolerance ms)
    singleton: tuple[str, str] | None = None            # (key, "skip" | "cancel")
    debounce: tuple[str, int, int | None] | None = None  # (key, period ms, timeout ms)
    batch: tuple[str, int, int] | None = None           # (key, max size, timeout ms)


@dataclass(slots=True)
class NewRun:
    run_id: str
    function_id: str
    function_version: int
    app_id: str
    jobs: list[NewJob]
    status: RunStatus = RunStatus.QUEUED
    pauses: list[NewPause] = field(default_factory=list)     # cancel_on
    idempotency_key: str | None = None                       # one run per key per function for 24 h
    start_timeout_ms: int | None = None                      # cancel if still queued after this long
    finish_timeout_ms: int | None = None                     # cancel if still running this long after start
    original_run_id: str | None = None                       # a rerun: the run it repeats
    steps: list[StepWrite] = field(default_factory=list)     # a rerun from a step: the results it keeps
    operation_id: str | None = None                          # a replay: the operation that started it
    flow: RunFlow | None = None                              # concurrency, throttle, … (None: no control)
    trace_id: str | None = None                              # its trace; None: a new one
    parent_span_id: str | None = None                        # the sender's span (an incoming traceparent)


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
    kind: JobKind = JobKind.STEP
    payload: dict[str, Any] | None = None
    slots: tuple[tuple[str, int], ...] = ()  # the concurrency slots it holds while executing: (slot, limit)
    lease_expired: bool = False   # claimed again after its previous worker's lease lapsed
    started_run: bool = False     # this claim started its run (Queued → Running)


@dataclass(slots=True)
class RunState:
    """Everything the planner needs to decide what happens next in a run, read inside one transaction."""

    run: RunRecord
    event: dict[str, Any] | None
    steps: dict[str, StepRecord]
    events: list[dict[str, Any]] | None = None  # a batch run's events, in order (the first is `event`)
    slots: RunSlots | None = None  # its concurrency slots and priority (None: it has neither)
    pending_jobs: int = 0        # other jobs of this run still queued or running
    pending_pauses: int = 0      # waits (events, invoked runs) not yet resolved
    busy_steps: frozenset[str] = frozenset()  # steps with a job queued or running, or a wait, right now

    def completed_outputs(self) -> dict[str, Any]:
        return {sid: s.output for sid, s in self.steps.items() if s.status is StepStatus.COMPLETED}


@dataclass(slots=True)
class SpanRecord:
    """One span of a run's trace, kept with the run (the run's own root span is made from the run itself)."""

    run_id: str
    span_id: str                 # 16 hex digits (W3C)
    parent_id: str | None        # None: a child of the run's root span
    name: str                    # "step charge", "call", "sleep nap", "wait approval", …
    start: int                   # epoch ms
    end: int | None
    status: str = "ok"           # ok | error
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StepUpdate:
    """What an attempt produced: stored on the step row."""

    status: StepStatus
    ended_at: int
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    logs: str | None = None
    span: SpanRecord | None = None   # the attempt's span, stored with it


@dataclass(slots=True)
class StepWrite:
    """Create or update one step row (code functions report several per call)."""

    step_id: str
    status: StepStatus
    name: str | None = None
    kind: str | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int | None = None
    scheduled_at: int | None = None
    ended_at: int | None = None
    logs: str | None = None      # what the attempt wrote with ctx.logger (None: keep what is stored)


@dataclass(slots=True)
class NewPause:
    """A run waiting for something outside it: an event (`wait_for_event`, `cancel_on`) or an invoked run."""

    run_id: str
    step_id: str                     # hashed step id ("" for cancel_on)
    kind: str                        # "event" | "invoke" | "cancel"
    event_name: str | None = None
    expression: str | None = None    # CEL over `event` (the run's trigger) and `async` (the candidate)
    child_run_id: str | None = None
    expires_at: int | None = None
    since: int | None = None         # events received at or after this instant (ms) may resolve it


@dataclass(slots=True)
class Pause:
    id: int
    run_id: str
    step_id: str
    kind: str
    event_name: str | None
    expression: str | None
    child_run_id: str | None
    expires_at: int | None


@dataclass(slots=True)
class Advance:
    """The decision taken after a job settled: step rows, new jobs, pauses, and maybe the run's end."""

    jobs: list[NewJob] = field(default_factory=list)
    skipped: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # step id -> reason
    steps: list[StepWrite] = field(default_factory=list)
    pauses: list[NewPause] = field(default_factory=list)
    remove_pauses: list[str] = field(default_factory=list)   # step ids whose waits are over
    finish: RunStatus | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    events: list[NewEvent] = field(default_factory=list)
    # a code function's run: call the function again once nothing of the run is pending any more (parallel
    # steps, sleeps and waits all settled). The store applies the rule, after everything above, in the same
    # transaction — it is written once, there.
    call_when_idle: bool = False
    spans: list[SpanRecord] = field(default_factory=list)   # the trace's spans this decision adds


@dataclass(slots=True)
class NewEvent:
    """An event created by the engine inside a transaction (an invocation, a failure notice), with its runs."""

    event: EventRecord
    runs: list[NewRun]


class OperationStatus(str, Enum):
    RUNNING = "Running"
    COMPLETED = "Completed"
    CANCELLED = "Cancelled"   # stopped by a person before the end


@dataclass(slots=True)
class OperationRecord:
    """A durable bulk operation (a bulk cancel): what it covers, how far it got. `cursor` is the last run id it
    has dealt with; runs are walked oldest first, so a process that takes it over goes on from there."""

    id: str
    kind: str                               # "cancel" | "replay"
    function_id: str
    params: dict[str, Any]                  # {"from": ms?, "until": ms, "if": CEL?, "statuses"?, "names"?…}
    status: OperationStatus
    created_at: int
    total: int = 0                          # runs not ended in the range when it was created
    processed: int = 0                      # of those, looked at so far
    succeeded: int = 0                      # cancelled / runs started
    skipped: int = 0                        # `if` false / the function's triggers do not match the event
    cursor: str | None = None
    ended_at: int | None = None
