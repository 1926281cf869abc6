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
    CREATE INDEX events_name_received ON events (name, received_at);

    CREATE TABLE runs (
        id                 TEXT PRIMARY KEY,
        function_id        TEXT NOT NULL,
        function_version   INTEGER NOT NULL,
        app_id             TEXT NOT NULL,
        event_id           TEXT,
        status             TEXT NOT NULL,
        created_at         INTEGER NOT NULL,
        started_at         INTEGER,
        ended_at           INTEGER,
        output             BLOB,
        error              BLOB,
        finish_timeout_ms  INTEGER
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
        name          TEXT,
        kind          TEXT,
        PRIMARY KEY (run_id, step_id)
    ) WITHOUT ROWID;

    -- The work queue. A leased job has lease_owner set and available_at = lease expiry, so an expired
    -- lease makes the job due again with no extra bookkeeping.
    CREATE TABLE jobs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id        TEXT NOT NULL,
        step_id       TEXT NOT NULL,
        kind          TEXT NOT NULL DEFAULT 'step',
        payload       BLOB,
        available_at  INTEGER NOT NULL,
        attempt       INTEGER NOT NULL DEFAULT 0,
        token         INTEGER NOT NULL DEFAULT 0,
        lease_owner   TEXT
    );
    CREATE INDEX jobs_due ON jobs (available_at);
    CREATE INDEX jobs_run ON jobs (run_id, kind);
    CREATE INDEX jobs_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;

    -- Runs waiting on something outside them: an event (wait_for_event, cancel_on) or an invoked run.
    CREATE TABLE pauses (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id        TEXT NOT NULL,
        step_id       TEXT NOT NULL,
        kind          TEXT NOT NULL,
        event_name    TEXT,
        expression    TEXT,
        child_run_id  TEXT,
        expires_at    INTEGER
    );
    CREATE INDEX pauses_event ON pauses (event_name) WHERE event_name IS NOT NULL;
    CREATE INDEX pauses_child ON pauses (child_run_id) WHERE child_run_id IS NOT NULL;
    CREATE INDEX pauses_run ON pauses (run_id);

    -- One run per (function, idempotency key) while the key is fresh (24 h).
    CREATE TABLE idempotency (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        expires_at   INTEGER NOT NULL,
        PRIMARY KEY (function_id, key)
    ) WITHOUT ROWID;

    -- Cron ticks already fired: the primary key makes each tick start one run, whoever fires it.
    CREATE TABLE cron_ticks (
        function_id  TEXT NOT NULL,
        tick_at      INTEGER NOT NULL,
        PRIMARY KEY (function_id, tick_at)
    ) WITHOUT ROWID;
    """,
    # version 2: a queued run's start deadline, checked when its first job is claimed (a start timeout job
    # alone comes too late: the run's first call is due before it and would start the run)
    """
    ALTER TABLE runs ADD COLUMN start_deadline INTEGER;
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
        params       BLOB NOT NULL,
        status       TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        total        INTEGER NOT NULL DEFAULT 0,
        processed    INTEGER NOT NULL DEFAULT 0,
        succeeded    INTEGER NOT NULL DEFAULT 0,
        skipped      INTEGER NOT NULL DEFAULT 0,
        cursor       TEXT,
        ended_at     INTEGER,
        lease_owner  TEXT,
        lease_until  INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX operations_running ON operations (status, lease_until);
    ALTER TABLE runs ADD COLUMN operation_id TEXT;
    CREATE INDEX runs_operation ON runs (operation_id, status) WHERE operation_id IS NOT NULL;
    ALTER TABLE jobs ADD COLUMN parked_at INTEGER;
    CREATE TABLE paused_functions (
        function_id  TEXT PRIMARY KEY,
        paused_at    INTEGER NOT NULL
    ) WITHOUT ROWID;
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
    ALTER TABLE jobs ADD COLUMN queued_at INTEGER;
    CREATE INDEX jobs_slot1 ON jobs (slot1) WHERE slot1 IS NOT NULL AND waiting_on IS NULL;
    CREATE INDEX jobs_slot2 ON jobs (slot2) WHERE slot2 IS NOT NULL AND waiting_on IS NULL;
    CREATE INDEX jobs_waiting ON jobs (waiting_on, queued_at, id) WHERE waiting_on IS NOT NULL;
    CREATE TABLE flow_limits (
        key  TEXT PRIMARY KEY,
        tat  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE singletons (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        PRIMARY KEY (function_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE debounces (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        first_at     INTEGER NOT NULL,
        PRIMARY KEY (function_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX debounces_run ON debounces (run_id);
    ALTER TABLE runs ADD COLUMN batched INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE batches (
        function_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        run_id       TEXT NOT NULL,
        size         INTEGER NOT NULL,
        max_size     INTEGER NOT NULL,
        PRIMARY KEY (function_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX batches_run ON batches (run_id);
    CREATE TABLE run_events (
        run_id    TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        event_id  TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX run_events_event ON run_events (event_id);
    ALTER TABLE steps ADD COLUMN span BLOB;
    ALTER TABLE runs ADD COLUMN trace_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_span_id TEXT;
    CREATE TABLE spans (
        run_id      TEXT NOT NULL,
        span_id     TEXT NOT NULL,
        parent_id   TEXT,
        name        TEXT NOT NULL,
        start_ms    INTEGER NOT NULL,
        end_ms      INTEGER,
        status      TEXT NOT NULL,
        attributes  BLOB,
        PRIMARY KEY (run_id, span_id)
    ) WITHOUT ROWID;
    CREATE TABLE skips (
        event_id     TEXT NOT NULL,
        function_id  TEXT NOT NULL,
        reason       TEXT NOT NULL,
        message      TEXT NOT NULL,
        at           INTEGER NOT NULL,
        PRIMARY KEY (event_id, function_id)
    ) WITHOUT ROWID;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
