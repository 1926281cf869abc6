"""Durable state. `open_store(url)` picks the backend from the URL."""

from __future__ import annotations

from stepflow.store.base import Store
from stepflow.store.records import (
    Advance,
    EventRecord,
    Job,
    JobKind,
    NewEvent,
    NewJob,
    NewPause,
    NewRun,
    RunRecord,
    RunState,
    RunStatus,
    StepRecord,
    StepStatus,
    StepUpdate,
    StepWrite,
)
from stepflow.store.sqlite import SqliteStore, sqlite_path_from_url

DEFAULT_SQLITE_PATH = ".stepflow/stepflow.db"


def store_from_url(url: str | None) -> Store:
    """`sqlite:///path.db` (or a bare path) → SqliteStore; `postgresql://…` → PostgresStore."""
    if not url:
        return SqliteStore(DEFAULT_SQLITE_PATH)
    if url.startswith(("postgres://", "postgresql://")):
        from stepflow.store.postgres import PostgresStore

        return PostgresStore(url)
    return SqliteStore(sqlite_path_from_url(url))


__all__ = [
    "DEFAULT_SQLITE_PATH",
    "Advance",
    "EventRecord",
    "Job",
    "JobKind",
    "NewEvent",
    "NewJob",
    "NewPause",
    "NewRun",
    "RunRecord",
    "RunState",
    "RunStatus",
    "SqliteStore",
    "StepRecord",
    "StepStatus",
    "StepUpdate",
    "StepWrite",
    "Store",
    "store_from_url",
]
