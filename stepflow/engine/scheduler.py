"""Cron triggers: fire each function's schedule on time, exactly once across processes.

Every engine process runs this loop; the store's `fire_cron` inserts (function, tick) under a primary key, so
whichever process gets there first starts the run and the others do nothing. Ticks missed while no engine
was running are not replayed: the schedule resumes at the next tick (as Inngest and cron do).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from stepflow.definitions import FunctionDef
from stepflow.engine.registry import FunctionRegistry
from stepflow.engine.runs import new_run
from stepflow.errors import StoreUnavailableError
from stepflow.ids import new_ulid, now_ms
from stepflow.store.base import Store
from stepflow.store.records import EventRecord, NewEvent

log = logging.getLogger("stepflow.engine")
CRON_EVENT = "inngest/scheduled.timer"   # the public name, so functions port unchanged
MAX_SLEEP = 5.0


def next_tick(schedule: str, after_ms: int) -> int:
    """The first tick of `schedule` strictly after `after_ms` (epoch ms). `TZ=Area/City` prefixes set the zone."""
    expr, tz = schedule.strip(), UTC
    if expr.startswith(("TZ=", "CRON_TZ=")):
        zone, _, expr = expr.partition(" ")
        tz = ZoneInfo(zone.split("=", 1)[1])  # type: ignore[assignment]
    start = datetime.fromtimestamp(after_ms / 1000, tz=tz)
    # six fields: seconds come FIRST, as in Quartz and Spring (croniter's default puts them last)
    return int(croniter(expr.strip(), start, second_at_beginning=True).get_next(datetime).timestamp() * 1000)


class CronScheduler:
    def __init__(self, store: Store, functions: FunctionRegistry, on_fired: asyncio.Event) -> None:
        self._store = store
        self._functions = functions
        self._on_fired = on_fired
        self._next: dict[tuple[str, int, str], int] = {}

    async def run(self) -> None:
        while True:
            try:
                delay = await self.tick(now_ms())
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:  # the engine's loops report the outage; try again soon
                log.debug("cron scheduler: %s", exc.message)
                delay = 1.0
            except Exception:
                log.exception("cron scheduler error; retrying")
                delay = 1.0
            await asyncio.sleep(delay)

    async def tick(self, now: int) -> float:
        """Fire what is due; return seconds until the next tick (bounded, so new functions are noticed)."""
        wanted: set[tuple[str, int, str]] = set()
        soonest = now + int(MAX_SLEEP * 1000)
        for version, fn in self._functions.active():
            for trigger in fn.triggers:
                if trigger.cron is None:
                    continue
                key = (fn.id, version, trigger.cron)
                wanted.add(key)
                due = self._next.get(key)
                if due is None:
                    due = self._next[key] = next_tick(trigger.cron, now)
                if due <= now:
                    await self._fire(fn, version, trigger.cron, due)
                    due = self._next[key] = next_tick(trigger.cron, now)
                soonest = min(soonest, due)
        for key in set(self._next) - wanted:
            del self._next[key]
        return max(0.0, (soonest - now_ms()) / 1000)

    async def _fire(self, fn: FunctionDef, version: int, schedule: str, tick: int) -> None:
        now = now_ms()
        event = EventRecord(id=new_ulid(), name=CRON_EVENT, data={"cron": schedule}, ts=tick, received_at=now)
        run = new_run(fn, version, event.to_dict(), now)
        if await self._store.fire_cron(fn.id, tick, NewEvent(event=event, runs=[run])):
            log.info("cron %r started run %s of %s", schedule, run.run_id, fn.id)
            self._on_fired.set()
