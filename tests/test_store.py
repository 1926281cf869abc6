"""Store contract tests: behaviour every backend must share (run here on SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_store
from stepflow.ids import now_ms
from stepflow.store.records import EventRecord, NewJob, NewRun
from stepflow.store.sql import EVENT_DEDUP_WINDOW_MS

# The store contract holds on every backend: each test runs on SQLite and on PostgreSQL (skipped, saying how
# to enable it, when STEPFLOW_TEST_POSTGRES_URL is not set).
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"])


def event(event_id: str, received_at: int, n: int) -> EventRecord:
    return EventRecord(id=event_id, name="test/e", data={"n": n}, ts=received_at, received_at=received_at)


def one_run(ev: EventRecord) -> list[NewRun]:
    return [NewRun(run_id=f"01RUN{ev.data['n']:021d}", function_id="f", function_version=1, app_id="a",
                   jobs=[NewJob("s", ev.received_at)])]


async def test_a_sender_id_deduplicates_for_24_hours_then_starts_a_new_event(tmp_path: Path, backend: str) -> None:
    store = await make_store(tmp_path, "s", backend)
    await store.open()
    try:
        start = now_ms() - EVENT_DEDUP_WINDOW_MS - 60_000
        assert await store.ingest_events([event("order-1", start, 1)], one_run) == ["order-1"]
        # within the window: the same event, no second run
        await store.ingest_events([event("order-1", start + 1000, 2)], one_run)
        assert [r.event_id for r in await store.get_event_runs("order-1")] == ["order-1"]
        assert (await store.get_event("order-1")).data == {"n": 1}  # type: ignore[union-attr]
        # after the window: a new event under the id; the old one and its run are kept, renamed
        later = start + EVENT_DEDUP_WINDOW_MS + 1
        await store.ingest_events([event("order-1", later, 3)], one_run)
        assert (await store.get_event("order-1")).data == {"n": 3}  # type: ignore[union-attr]
        assert len(await store.get_event_runs("order-1")) == 1
        archived = f"order-1:{start}"
        assert (await store.get_event(archived)).data == {"n": 1}  # type: ignore[union-attr]
        assert [r.function_id for r in await store.get_event_runs(archived)] == ["f"]
    finally:
        await store.close()


async def test_claims_lease_jobs_once_and_expired_leases_count_an_attempt(tmp_path: Path, backend: str) -> None:
    store = await make_store(tmp_path, "claims", backend)
    await store.open()
    try:
        now = now_ms()
        await store.ingest_events([event("e1", now, 1)], one_run)
        first = await store.claim_jobs("w1", 10, 1000, now)
        assert [(j.step_id, j.attempt) for j in first] == [("s", 0)]
        assert await store.claim_jobs("w2", 10, 1000, now + 10) == []      # leased: nobody else gets it
        again = await store.claim_jobs("w2", 10, 1000, now + 2000)          # the lease expired: w1 died
        assert [(j.step_id, j.attempt) for j in again] == [("s", 1)]
        run = await store.get_run(first[0].run_id)
        assert run is not None and run.status.value == "RUNNING"
    finally:
        await store.close()


async def test_parallel_claims_never_hand_out_a_job_twice(tmp_path: Path, backend: str) -> None:
    import asyncio

    store = await make_store(tmp_path, "parallel", backend)
    await store.open()
    try:
        now = now_ms()
        await store.ingest_events([event(f"e{i}", now, i) for i in range(60)], one_run)
        claims = await asyncio.gather(*(store.claim_jobs(f"w{i}", 7, 60_000, now) for i in range(12)))
        claimed = [job.id for batch in claims for job in batch]
        assert len(claimed) == 60 and len(set(claimed)) == 60
    finally:
        await store.close()


async def test_a_cron_tick_fires_once(tmp_path: Path, backend: str) -> None:
    from stepflow.store.records import NewEvent

    store = await make_store(tmp_path, "cron", backend)
    await store.open()
    try:
        now = now_ms()
        fired = [await store.fire_cron("f", 1_000, NewEvent(event=event(f"tick-{i}", now, i), runs=one_run(
            event(f"tick-{i}", now, i)))) for i in range(3)]
        assert fired == [True, False, False]
        assert len(await store.list_runs()) == 1
    finally:
        await store.close()
