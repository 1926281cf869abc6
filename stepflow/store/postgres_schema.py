"""PostgreSQL schema, versioned like SQLite's (same version numbers for the same changes).

Applied only by `stepflow migrate` (or `PostgresStore.migrate()`): a server never changes a shared database
on its own, and refuses to start on a schema that is not the one it needs.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE functions (
        id          TEXT NOT NULL,
        version     INTEGER NOT NULL,
        app_id      TEXT NOT NULL,
        config      BYTEA NOT NULL,
        created_at  BIGINT NOT NULL,
        active      INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (id, version)
    );

    CREATE TABLE events (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        payload      BYTEA NOT NULL,
        ts           BIGINT NOT NULL,
        received_at  BIGINT NOT NULL
    );
    CREATE INDEX events_name_received ON events (name, received_at);

    CREATE TABLE runs (
        id                 TEXT PRIMARY KEY,
        function_id        TEXT NOT NULL,
        function_version   INTEGER NOT NULL,
        app_id             TEXT NOT NULL,
        event_id           TEXT,
        status             TEXT NOT NULL,
        created_at         BIGINT NOT NULL,
        started_at         BIGINT,
        ended_at           BIGINT,
        output             BYTEA,
        error              BYTEA,
        finish_timeout_ms  BIGINT
    );
    CREATE INDEX runs_event ON runs (event_id);
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_function ON runs (function_id, id);

    CREATE TABLE steps (
        run_id        TEXT NOT NULL,
        step_id       TEXT NOT NULL,
        status        TEXT NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        scheduled_at  BIGINT,
        started_at    BIGINT,
        ended_at      BIGINT,
        output        BYTEA,
        error         BYTEA,
        seq           INTEGER NOT NULL DEFAULT 0,
        logs          TEXT,
        name          TEXT,
        kind          TEXT,
        PRIMARY KEY (run_id, step_id)
    );

    -- The work queue. A leased job has lease_owner set and available_at = lease expiry, so an expired
    -- lease makes the job due again with no extra bookkeeping. Claimed with FOR UPDATE SKIP LOCKED.
    CREATE TABLE jobs (
        id            BIGSERIAL PRIMARY KEY,
        run_id        TEXT NOT NULL,
        step_id       TEXT NOT NULL,
        kind          TEXT NOT NULL DEFAULT 'step',
        payload       BYTEA,
        available_at  BIGINT NOT NULL,
        attempt       INTEGER NOT NULL DEFAULT 0,
        token         INTEGER NOT NULL DEFAULT 0,
        lease_owner   TEXT
    );
    CREATE INDEX jobs_due ON jobs (available_at);
    CREATE INDEX jobs_run ON jobs (run_id, kind);
    CREATE INDEX jobs_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;

    CREATE TABLE pauses (
        id            BIGSERIAL PRIMARY KEY,
        run_id        TEXT NOT NULL,
        step_id       TEXT NOT NULL,
        kind          TEXT NOT NULL,
        event_name    TEXT,
        expression    TEXT,
        child_run_id  TEXT,
        expires_at    BIGINT
    );
    CREATE INDEX pauses_event ON pauses (event_name) WHERE event_name IS NOT NULL;
    CREATE INDEX pauses_child ON pauses (child_run_id) WHERE child_run_id IS NOT NULL;
    CREATE INDEX pauses_run ON pauses (run_id);

    CREATE TABLE idempotency (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        expires_at   BIGINT NOT NULL,
        PRIMARY KEY (function_id, key)
    );

    CREATE TABLE cron_ticks (
        function_id  TEXT NOT NULL,
        tick_at      BIGINT NOT NULL,
        PRIMARY KEY (function_id, tick_at)
    );
    """,
    # version 2: a queued run's start deadline
    """
    ALTER TABLE runs ADD COLUMN start_deadline BIGINT;
    """,
    # version 3: a rerun links to the run it repeats; events listed newest first
    """
    ALTER TABLE runs ADD COLUMN original_run_id TEXT;
    CREATE INDEX runs_original ON runs (original_run_id);
    CREATE INDEX events_received ON events (received_at, id);
    """,
    # version 4: durable bulk operations (bulk cancel, replay), taken over by any process when its lease lapses;
    # paused functions
    """
    CREATE TABLE operations (
        id           TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        function_id  TEXT NOT NULL,
        params       BYTEA NOT NULL,
        status       TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        total        BIGINT NOT NULL DEFAULT 0,
        processed    BIGINT NOT NULL DEFAULT 0,
        succeeded    BIGINT NOT NULL DEFAULT 0,
        skipped      BIGINT NOT NULL DEFAULT 0,
        cursor       TEXT,
        ended_at     BIGINT,
        lease_owner  TEXT,
        lease_until  BIGINT
    );
    CREATE INDEX operations_running ON operations (status, lease_until);
    ALTER TABLE runs ADD COLUMN operation_id TEXT;
    CREATE INDEX runs_operation ON runs (operation_id, status) WHERE operation_id IS NOT NULL;
    ALTER TABLE jobs ADD COLUMN parked_at BIGINT;
    CREATE TABLE paused_functions (
        function_id  TEXT PRIMARY KEY,
        paused_at    BIGINT NOT NULL
    );
    """,
    # version 5: flow control. Concurrency slots (a job holds its run's slots while leased; a job that would
    # exceed a limit waits parked on the slot, `waiting_on`, and is woken in `queued_at` order as slots free up);
    # priority; throttle and rate-limit state (GCRA: one theoretical arrival time per key); singleton and
    # debounce keys; event batches (a batch run's events, in order: `run_events`); the events a control skipped;
    # traces: a run's trace id and its spans (step attempts, sleeps, waits), kept with it
    """
    ALTER TABLE runs ADD COLUMN slot1 TEXT;
    ALTER TABLE runs ADD COLUMN limit1 INTEGER;
    ALTER TABLE runs ADD COLUMN slot2 TEXT;
    ALTER TABLE runs ADD COLUMN limit2 INTEGER;
    ALTER TABLE runs ADD COLUMN priority_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN singleton_key TEXT;
    ALTER TABLE jobs ADD COLUMN slot1 TEXT;
    ALTER TABLE jobs ADD COLUMN limit1 INTEGER;
    ALTER TABLE jobs ADD COLUMN slot2 TEXT;
    ALTER TABLE jobs ADD COLUMN limit2 INTEGER;
    ALTER TABLE jobs ADD COLUMN waiting_on TEXT;
    ALTER TABLE jobs ADD COLUMN hold TEXT;
    ALTER TABLE jobs ADD COLUMN reclaimed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN queued_at BIGINT;
    CREATE INDEX jobs_slot1 ON jobs (slot1) WHERE slot1 IS NOT NULL AND waiting_on IS NULL;
    CREATE INDEX jobs_slot2 ON jobs (slot2) WHERE slot2 IS NOT NULL AND waiting_on IS NULL;
    CREATE INDEX jobs_waiting ON jobs (waiting_on, queued_at, id) WHERE waiting_on IS NOT NULL;
    CREATE TABLE flow_limits (
        key  TEXT PRIMARY KEY,
        tat  BIGINT NOT NULL
    );
    CREATE TABLE singletons (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        PRIMARY KEY (function_id, key)
    );
    CREATE TABLE debounces (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        first_at     BIGINT NOT NULL,
        PRIMARY KEY (function_id, key)
    );
    CREATE INDEX debounces_run ON debounces (run_id);
    ALTER TABLE runs ADD COLUMN batched INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE batches (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        size         INTEGER NOT NULL,
        max_size     INTEGER NOT NULL,
        PRIMARY KEY (function_id, key)
    );
    CREATE INDEX batches_run ON batches (run_id);
    CREATE TABLE run_events (
        run_id    TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        event_id  TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX run_events_event ON run_events (event_id);
    ALTER TABLE steps ADD COLUMN span BYTEA;
    ALTER TABLE runs ADD COLUMN trace_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_span_id TEXT;
    CREATE TABLE spans (
        run_id      TEXT NOT NULL,
        span_id     TEXT NOT NULL,
        parent_id   TEXT,
        name        TEXT NOT NULL,
        start_ms    BIGINT NOT NULL,
        end_ms      BIGINT,
        status      TEXT NOT NULL,
        attributes  BYTEA,
        PRIMARY KEY (run_id, span_id)
    );
    CREATE TABLE skips (
        event_id     TEXT NOT NULL,
        function_id  TEXT NOT NULL,
        reason       TEXT NOT NULL,
        message      TEXT NOT NULL,
        at           BIGINT NOT NULL,
        PRIMARY KEY (event_id, function_id)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
