"""Store contract: events and the runs they start, stored in one transaction; duplicates; cron ticks."""

from __future__ import annotations

import pytest
from store_support import event, one_step_run, planned, run_id

from stepflow.ids import now_ms
from stepflow.store.base import Store
from stepflow.store.records import NewEvent, RunStatus
from stepflow.store.sql import EVENT_DEDUP_WINDOW_MS

pytestmark = pytest.mark.runs_once  # parametrized over both stores


async def test_events_and_their_runs_are_stored_together_in_order(store: Store) -> None:
    plan = planned(one_step_run)
    ids = await store.ingest_events([event("e1", 1), event("e2", 2), event("e3", 3)], plan)
    assert ids == ["e1", "e2", "e3"] and plan.seen == ["e1", "e2", "e3"]
    stored = await store.get_event("e2")
    assert stored is not None and (stored.name, stored.data) == ("test/e", {"n": 2})
    [run] = await store.get_event_runs("e2")
    assert (run.id, run.function_id, run.status) == (run_id(2), "f", RunStatus.QUEUED)
    assert await store.get_event("nope") is None and await store.get_event_runs("nope") == []
    many = await store.get_events(["e3", "nope", "e1", "e3"])
    assert sorted(many) == ["e1", "e3"] and many["e3"].data == {"n": 3} and many["e1"].name == "test/e"
    assert await store.get_events([]) == {}


async def test_a_duplicate_id_stores_nothing_and_plans_nothing(store: Store) -> None:
    await store.ingest_events([event("dup", 1)], one_step_run)
    plan = planned(one_step_run)
    assert await store.ingest_events([event("dup", 2), event("new", 3)], plan) == ["dup", "new"]
    assert plan.seen == ["new"]  # the duplicate was not even planned
    assert (await store.get_event("dup")).data == {"n": 1}  # type: ignore[union-attr]
    assert len(await store.list_runs()) == 2


async def test_an_id_reused_after_the_window_is_a_new_event_and_the_old_one_is_kept(store: Store) -> None:
    start = now_ms() - EVENT_DEDUP_WINDOW_MS - 60_000
    await store.ingest_events([event("order-1", 1, at=start)], one_step_run)
    await store.ingest_events([event("order-1", 2, at=start + EVENT_DEDUP_WINDOW_MS + 1)], one_step_run)
    assert (await store.get_event("order-1")).data == {"n": 2}  # type: ignore[union-attr]
    archived = await store.get_event(f"order-1:{start}")
    assert archived is not None and archived.data == {"n": 1}
    assert [r.id for r in await store.get_event_runs(f"order-1:{start}")] == [run_id(1)]


async def test_a_cron_tick_fires_exactly_once(store: Store) -> None:
    results = []
    for attempt in range(3):
        ev = event(f"tick-{attempt}", attempt)
        results.append(await store.fire_cron("f", 60_000, NewEvent(event=ev, runs=one_step_run(ev))))
    assert results == [True, False, False]
    ev = event("tick-next", 9)
    assert await store.fire_cron("f", 120_000, NewEvent(event=ev, runs=one_step_run(ev)))  # the next tick
    assert sorted(r.id for r in await store.list_runs()) == [run_id(0), run_id(9)]
