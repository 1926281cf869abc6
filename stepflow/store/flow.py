"""Flow control inside store transactions, for every SQL backend (stepflow/definitions/flow_control.py says what
each control means). Everything here is counted in the database, so engine processes sharing it never exceed a
limit between them; on PostgreSQL each key is serialized with a transaction-scoped advisory lock (`lock_key`).

Concurrency. A run's step and call jobs carry its slots (`slot1`/`slot2` with their limits). A slot's occupancy is
its jobs that are executing (leased) or due and ready to be claimed. A job that would exceed a limit is parked on
the slot (`waiting_on`, `available_at` = PARKED) — when inserted, or when claimed if the slot filled meanwhile —
so a saturated key's backlog never stands in the due queue ahead of other keys' work (fair key queues). When a
slot frees up (a job settles, is retried, its run ends, its lease is released), its oldest waiters (`queued_at`,
which priority moves) are made due, as many as there is room for; a periodic sweep (`wake_all`) catches what no
release announced, such as a crashed worker's lease lapsing.

Throttle and rate limit are GCRA over one stored theoretical arrival time per key (`flow_limits`): a throttled
run's first jobs are due at the start time it reserved (FIFO, none dropped); a rate-limited event starts no run.
"""

from __future__ import annotations

from typing import Any, Protocol

from stepflow.store.records import JobKind, RunSlots

PARKED = 2**62  # the available_at of a job set aside (a paused run's, or one waiting for a slot)
SLOT_KINDS = (JobKind.STEP.value, JobKind.CALL.value)  # the jobs that execute the user's code, and hold slots


class Conn(Protocol):
    async def execute(self, sql: str, *args: Any) -> int: ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def fetchrow(self, sql: str, *args: Any) -> Any: ...


def as_slots(row: Any) -> RunSlots | None:
    """(slot1, limit1, slot2, limit2, priority_ms) columns as a run's slots; None when it has neither."""
    if row[0] is None and row[2] is None and not row[4]:
        return None
    return (row[0], row[1], row[2], row[3], int(row[4] or 0))


async def occupancy(c: Conn, slot: str, now: int) -> int:
    """The slot's jobs executing (leased) or due and ready to be claimed."""
    return int(await c.fetchval(
        "SELECT (SELECT COUNT(*) FROM jobs WHERE slot1=? AND waiting_on IS NULL AND "
        "(lease_owner IS NOT NULL OR available_at<=?)) + (SELECT COUNT(*) FROM jobs WHERE slot2=? AND "
        "waiting_on IS NULL AND (lease_owner IS NOT NULL OR available_at<=?))", slot, now, slot, now))


async def executing(c: Conn, slot: str, now: int) -> int:
    """The slot's jobs leased and not expired: the steps executing right now."""
    return int(await c.fetchval(
        "SELECT (SELECT COUNT(*) FROM jobs WHERE slot1=? AND waiting_on IS NULL AND lease_owner IS NOT NULL AND "
        "available_at>?) + (SELECT COUNT(*) FROM jobs WHERE slot2=? AND waiting_on IS NULL AND "
        "lease_owner IS NOT NULL AND available_at>?)", slot, now, slot, now))


async def executing_many(c: Conn, slots: list[str], now: int) -> dict[str, int]:
    """`executing` for several slots in one statement (a claim's: one round trip however many keys it meets)."""
    marks = ", ".join("?" * len(slots))
    live = "waiting_on IS NULL AND lease_owner IS NOT NULL AND available_at>?"
    rows = await c.fetch(f"SELECT s, COUNT(*) FROM (SELECT slot1 AS s FROM jobs WHERE slot1 IN ({marks}) AND {live} "
                         f"UNION ALL SELECT slot2 AS s FROM jobs WHERE slot2 IN ({marks}) AND {live}) t GROUP BY s",
                         *slots, now, *slots, now)
    counts = dict.fromkeys(slots, 0)
    counts.update({slot: int(n) for slot, n in rows})
    return counts


def slots_of(row: RunSlots | None) -> list[tuple[str, int]]:
    if row is None:
        return []
    return [(slot, int(limit)) for slot, limit in ((row[0], row[1]), (row[2], row[3]))
            if slot is not None and limit is not None]


async def insert_job(c: Conn, run_id: str, step_id: str, kind: str, payload: bytes | None, at: int, attempt: int,
                     flow: RunSlots | None, now: int, hold: str | None = None) -> None:
    """Insert a job, applying the run's priority and concurrency slots to the jobs that execute code. `hold`
    says why it is not due now (debounce, throttle), for the run's `waiting` reason."""
    if kind not in SLOT_KINDS:
        hold = None
    if flow is None or kind not in SLOT_KINDS:
        await c.execute("INSERT INTO jobs (run_id, step_id, kind, payload, available_at, attempt, queued_at, hold) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", run_id, step_id, kind, payload, at, attempt, at, hold)
        return
    if flow[4] and at <= now:
        at -= flow[4]  # ahead of (or, negative, behind) the work enqueued up to that long before it
    waiting_on = None
    if at <= now:
        for slot, limit in slots_of(flow):
            if await occupancy(c, slot, now) >= limit:
                waiting_on = slot
                break
    await c.execute("INSERT INTO jobs (run_id, step_id, kind, payload, available_at, attempt, queued_at, slot1, "
                    "limit1, slot2, limit2, waiting_on, hold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    run_id, step_id, kind, payload, PARKED if waiting_on else at, attempt, at,
                    flow[0], flow[1], flow[2], flow[3], waiting_on, hold)


async def park(c: Conn, job_id: int, slot: str) -> None:
    """A claimed job whose slot is full goes back, to wait on it (keeping its place: `queued_at`)."""
    await c.execute("UPDATE jobs SET lease_owner=NULL, available_at=?, waiting_on=? WHERE id=?", PARKED, slot,
                    job_id)


async def wake(c: Conn, slot: str, limit: int, now: int) -> int:
    """Make the slot's oldest waiters due, as many as it has room for. Returns how many."""
    if await c.fetchval("SELECT 1 FROM jobs WHERE waiting_on=? LIMIT 1", slot) is None:
        return 0  # nobody waits (the usual case when the limit is not reached): nothing to count
    room = limit - await occupancy(c, slot, now)
    if room <= 0:
        return 0
    # `waiting_on=?` again on the row itself: on PostgreSQL a concurrent wake may have woken (and a claim leased)
    # a row the subquery picked; re-checked after the row lock, it is left alone instead of having its lease
    # undone (available_at in the past makes a leased job look abandoned)
    return await c.execute(
        "UPDATE jobs SET available_at=?, waiting_on=NULL WHERE waiting_on=? AND lease_owner IS NULL AND id IN "
        "(SELECT id FROM jobs WHERE waiting_on=? ORDER BY queued_at, id LIMIT ?)", now, slot, slot, room)


async def wake_all(c: Conn, now: int) -> int:
    """Wake the waiters of every slot with room: the net under releases nobody announced (a lapsed lease)."""
    rows = await c.fetch("SELECT waiting_on, MAX(CASE WHEN waiting_on=slot1 THEN limit1 ELSE limit2 END) FROM jobs "
                         "WHERE waiting_on IS NOT NULL GROUP BY waiting_on")
    woken = 0
    for slot, limit in rows:
        woken += await wake(c, slot, int(limit), now)
    return woken


async def gcra(c: Conn, key: str, interval: int, tolerance: int, now: int, *, queue: bool) -> int | None:
    """Generic cell rate algorithm over the key's stored theoretical arrival time (the caller holds the key's
    lock). Returns when the run may start — now, or later when `queue` (throttle: the slot is reserved) — or
    None when it may not and `queue` is false (rate limit: nothing is reserved)."""
    tat = await c.fetchval("SELECT tat FROM flow_limits WHERE key=?", key)
    base = max(int(tat) if tat is not None else now, now)
    start = max(now, base - tolerance)
    if start > now and not queue:
        return None
    await c.execute("INSERT INTO flow_limits (key, tat) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "tat=excluded.tat", key, base + interval)
    return start


async def record_skip(c: Conn, event_id: str | None, function_id: str, reason: str, message: str,
                      now: int) -> None:
    if event_id is None:
        return
    await c.execute("INSERT INTO skips (event_id, function_id, reason, message, at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id, function_id) DO UPDATE SET reason=excluded.reason, "
                    "message=excluded.message, at=excluded.at", event_id, function_id, reason, message, now)



async def waiting_reasons(c: Conn, run_id: str, now: int) -> dict[str, dict[str, Any]]:
    """Why the run's work is not executing, by step id ("" for a code function's call):
    `{"reason": "concurrency", "key", "executing", "limit"}` (key None: a limit without key), or
    `{"reason": "throttle" | "debounce", "until": ms}`, or `{"reason": "batch", "until", "size", "max_size"}`."""
    rows = await c.fetch("SELECT step_id, waiting_on, hold, available_at, slot1, limit1, limit2 FROM jobs WHERE "
                         "run_id=? AND kind IN ('step', 'call') AND (waiting_on IS NOT NULL OR "
                         "(hold IS NOT NULL AND available_at>?))", run_id, now)
    reasons: dict[str, dict[str, Any]] = {}
    for step_id, slot, hold, available_at, slot1, limit1, limit2 in rows:
        if slot is not None:
            value = slot[2:] if slot.startswith("*:") else slot.split(":", 2)[2]
            reasons[step_id] = {"reason": "concurrency", "key": value or None,
                                "executing": await executing(c, slot, now),
                                "limit": int(limit1 if slot == slot1 else limit2)}
        elif hold == "batch":
            size = await c.fetchrow("SELECT size, max_size FROM batches WHERE run_id=?", run_id)
            reasons[step_id] = {"reason": "batch", "until": int(available_at), "size": int(size[0]) if size else 1,
                                "max_size": int(size[1]) if size else 1}
        else:
            reasons[step_id] = {"reason": hold, "until": int(available_at)}
    return reasons
