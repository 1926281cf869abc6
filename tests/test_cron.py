"""Cron triggers fire on schedule, once per tick, for SDK and workflow functions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import stepflow
from stepflow.engine import EngineConfig
from stepflow.engine.scheduler import CRON_EVENT, next_tick
from stepflow.store import SqliteStore

pytestmark = pytest.mark.runs_once  # its engines use SQLite files


def test_next_tick_respects_the_time_zone_prefix() -> None:
    # 2026-01-15 07:30 UTC = 08:30 in Paris (winter, UTC+1): the next 09:00 Paris is 08:00 UTC the same day
    base = 1768462200000
    assert next_tick("TZ=Europe/Paris 0 9 * * *", base) == 1768464000000
    assert next_tick("0 9 * * *", base) == 1768467600000  # 09:00 UTC


def test_six_fields_put_the_seconds_first() -> None:
    """Quartz and Spring order: second minute hour day month weekday."""
    base = 1768462200000  # 2026-01-15 07:30:00 UTC
    assert next_tick("*/20 * * * * *", base) == base + 20_000          # every 20 seconds
    assert next_tick("30 * * * * *", base) == base + 30_000            # at second 30 of every minute
    assert next_tick("0 45 7 * * *", base) == base + 15 * 60_000       # 07:45:00
    assert next_tick("*/5 * * * *", base) == base + 5 * 60_000         # five fields: minutes, as ever


@pytest.mark.parametrize("schedule", ["* * * * * * *", "* * * *", "61 * * * * *"])
def test_other_field_counts_and_bad_seconds_are_refused(schedule: str) -> None:
    with pytest.raises(stepflow.DefinitionError, match="6 with seconds first"):
        stepflow.workflow("bad-cron", triggers=[stepflow.cron(schedule)],
                          steps={"s": {"runtime": {"type": "inprocess", "handler": "json:dumps"}}})


async def test_a_cron_function_runs_every_tick(tmp_path: Path) -> None:
    app = stepflow.App("cron")
    seen: list[str] = []

    @app.function(id="every-second", trigger=stepflow.cron("* * * * * *"))  # 6th field: seconds
    async def tick(ctx: stepflow.Context) -> str:
        seen.append(ctx.event.name)
        return await ctx.step.run("work", lambda: ctx.event.data["cron"])

    store = SqliteStore(tmp_path / "cron.db")
    async with stepflow.Engine(app, store=store, config=EngineConfig(poll_interval=0.1)) as engine:
        for _ in range(60):
            runs = await engine.list_runs(function_id="every-second", status="Completed")
            if len(runs) >= 2:
                break
            await asyncio.sleep(0.1)
        runs = await engine.list_runs(function_id="every-second")
        ticks = store.db.execute("SELECT tick_at FROM cron_ticks ORDER BY tick_at").fetchall()
    completed = [r for r in runs if r["status"] == "Completed"]
    assert len(completed) >= 2, runs
    assert all(r["output"] == "* * * * * *" for r in completed)
    assert set(seen) == {CRON_EVENT}
    # one run per tick: the triggering events have distinct timestamps a second apart
    assert len(ticks) >= len(runs)  # a tick may have fired as the engine stopped, after the listing
    assert all(b[0] - a[0] >= 1000 for a, b in zip(ticks, ticks[1:], strict=False))


async def test_two_engines_on_one_database_fire_each_tick_once(tmp_path: Path) -> None:
    """Scale-out shape: every process runs the scheduler; the store's tick table lets one of them win."""
    fn = stepflow.workflow("wf-cron", triggers=[stepflow.cron("* * * * * *")],
                           steps={"only": {"runtime": {"type": "inprocess", "handler": "json:dumps"}}})
    from stepflow.engine import EngineCore as CoreEngine

    first = CoreEngine(SqliteStore(tmp_path / "shared.db"), EngineConfig(poll_interval=0.1), run_workers=False)
    second = CoreEngine(SqliteStore(tmp_path / "shared.db"), EngineConfig(poll_interval=0.1), run_workers=False)
    await first.start()
    await second.start()
    try:
        await first.register(fn)
        await second.register(fn)
        from stepflow.engine.scheduler import CronScheduler
        from stepflow.ids import now_ms

        schedulers = [CronScheduler(e.store, e.functions, asyncio.Event()) for e in (first, second)]
        start = now_ms()
        for s in schedulers:
            await s.tick(start)  # both learn the next tick
        due = next_tick("* * * * * *", start)
        for s in schedulers:
            await s.tick(due + 1)  # both find it due
        runs = await first.store.list_runs(function_id="wf-cron")
        assert len(runs) == 1
    finally:
        await first.stop()
        await second.stop()
