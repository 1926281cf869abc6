"""Helpers of the store contract suite (tests/store/). Its `store` fixture, in tests/conftest.py, opens a fresh
store per test on each backend — a SQLite file, or a new migrated PostgreSQL schema — so each test is a
contract every backend must keep."""

from __future__ import annotations

from typing import Any

from stepflow.ids import now_ms
from stepflow.store.records import EventRecord, JobKind, NewJob, NewRun


def event(event_id: str, n: int = 0, *, at: int | None = None, name: str = "test/e") -> EventRecord:
    received = now_ms() if at is None else at
    return EventRecord(id=event_id, name=name, data={"n": n}, ts=received, received_at=received)


def run_id(n: int) -> str:
    """A ULID-shaped run id, ordered by n."""
    return f"01RUN{n:021d}"


def one_step_run(ev: EventRecord, *, function_id: str = "f", steps: tuple[str, ...] = ("s",),
                 at: int | None = None) -> list[NewRun]:
    """The plan of a workflow function with root steps `steps`, one run per event."""
    available = ev.received_at if at is None else at
    return [NewRun(run_id=run_id(int(ev.data["n"])), function_id=function_id, function_version=1, app_id="a",
                   jobs=[NewJob(step, available) for step in steps])]


def code_run(ev: EventRecord) -> list[NewRun]:
    """The plan of a code function: one untargeted call."""
    return [NewRun(run_id=run_id(int(ev.data["n"])), function_id="code", function_version=1, app_id="a",
                   jobs=[NewJob("", ev.received_at, JobKind.CALL, step_row=False)])]


def planned(plan: Any) -> Any:
    """Wrap a plan so the test can see which events it was asked about."""
    seen: list[str] = []

    def wrapped(ev: EventRecord) -> list[NewRun]:
        seen.append(ev.id)
        return list(plan(ev))

    wrapped.seen = seen  # type: ignore[attr-defined]
    return wrapped
