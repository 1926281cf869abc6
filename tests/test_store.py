"""Store contract tests: behaviour every backend must share (run here on SQLite)."""

from __future__ import annotations

from pathlib import Path

from stepflow.ids import now_ms
from stepflow.store import SqliteStore
from stepflow.store.records import EventRecord, NewJob, NewRun
from stepflow.store.sqlite import EVENT_DEDUP_WINDOW_MS


def event(event_id: str, received_at: int, n: int) -> EventRecord:
    return EventRecord(id=event_id, name="test/e", data={"n": n}, ts=received_at, received_at=received_at)


def one_run(ev: EventRecord) -> list[NewRun]:
    return [NewRun(run_id=f"01RUN{ev.data['n']:021d}", function_id="f", function_version=1, app_id="a",
                   jobs=[NewJob("s", ev.received_at)])]


async def test_a_sender_id_deduplicates_for_24_hours_then_starts_a_new_event(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
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
