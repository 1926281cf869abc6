"""Waiting for runs to end without a polling loop on the caller's side.

Runs that end in this process wake their waiters at once. Runs that end in another process (scale-out)
are seen by a slow re-check, so a waiter never hangs past its deadline and never misses the end.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from stepflow.store.base import Store
from stepflow.store.records import RunRecord

RECHECK_SECONDS = 0.5


class RunWatcher:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._closing = False

    def close(self) -> None:
        """Shutting down: every waiter returns the run as it is now."""
        self._closing = True
        for run_id in list(self._waiters):
            self.notify(run_id)

    def notify(self, run_id: str) -> None:
        for fut in self._waiters.pop(run_id, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait(self, run_id: str, timeout: float) -> RunRecord | None:
        """The run once it has ended, or as it is when `timeout` runs out. None if it does not exist."""
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters[run_id].append(fut)  # registered before the read: an end in between is not missed
            try:
                run = await self._store.get_run(run_id)
                remaining = deadline - time.monotonic()
                if run is None or run.status.is_terminal or remaining <= 0 or self._closing:
                    return run
                try:
                    await asyncio.wait_for(fut, min(remaining, RECHECK_SECONDS))
                except TimeoutError:
                    pass
            finally:
                waiters = self._waiters.get(run_id)
                if waiters is not None:
                    if fut in waiters:
                        waiters.remove(fut)
                    if not waiters:
                        self._waiters.pop(run_id, None)
