"""SQLite schema, versioned. Each entry of MIGRATIONS moves the schema one version forward."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE functions (
        id          TEXT NOT NULL,
        version     INTEGER NOT NULL,
        app_id      TEXT NOT NULL,
        config      BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
        active      INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (id, version)
    ) WITHOUT ROWID;

    CREATE TABLE events (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        payload      BLOB NOT NULL,
        ts           INTEGER NOT NULL,
        received_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX events_received ON events (received_at);

    CREATE TABLE runs (
        id                TEXT PRIMARY KEY,
        function_id       TEXT NOT NULL,
        function_version  INTEGER NOT NULL,
        app_id            TEXT NOT NULL,
        event_id          TEXT,
        status            TEXT NOT NULL,
        created_at        INTEGER NOT NULL,
        started_at        INTEGER,
        ended_at          INTEGER,
        output            BLOB,
        error             BLOB
    ) WITHOUT ROWID;
    CREATE INDEX runs_event ON runs (event_id);
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_function ON runs (function_id, id);

    CREATE TABLE steps (
        run_id        TEXT NOT NULL,
        step_id       TEXT NOT NULL,
        status        TEXT NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        scheduled_at  INTEGER,
        started_at    INTEGER,
        ended_at      INTEGER,
        output        BLOB,
        error         BLOB,
        seq           INTEGER NOT NULL DEFAULT 0,
        logs          TEXT,
        PRIMARY KEY (run_id, step_id)
    ) WITHOUT ROWID;

    -- The work queue. A leased job has lease_owner set and available_at = lease expiry, so an expired
    -- lease makes the job due again with no extra bookkeeping.
    CREATE TABLE jobs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id        TEXT NOT NULL,
        step_id       TEXT NOT NULL,
        available_at  INTEGER NOT NULL,
        attempt       INTEGER NOT NULL DEFAULT 0,
        token         INTEGER NOT NULL DEFAULT 0,
        lease_owner   TEXT
    );
    CREATE INDEX jobs_due ON jobs (available_at);
    CREATE INDEX jobs_run ON jobs (run_id);
    CREATE INDEX jobs_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
