"""Background checkpointing for durable endpoints: never on the request path, never lost.

Checkpoints go into a bounded in-memory queue; one sender task posts them to the server in batches, in
order, retrying with backoff while the server is unreachable. When the queue is full, new checkpoints wait
for room (the request that produced them waits — backpressure rather than loss) and a warning says so.
`await wait()` drains the queue, e.g. at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from stepflow import codec

log = logging.getLogger("stepflow.endpoints")
BATCH = 200


class Checkpointer:
    def __init__(self, base_url: str, signing_key: str | None, *, max_buffer: int = 10_000,
                 retry_max: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.signing_key = signing_key
        self.max_buffer = max_buffer
        self.retry_max = retry_max
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._warned_full = False
        self.sent = 0
        self.failures = 0

    def _ensure(self) -> asyncio.Queue[dict[str, Any]]:
        if self._queue is None:
            self._queue = asyncio.Queue(self.max_buffer)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_forever(), name="stepflow-checkpoints")
        return self._queue

    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def put(self, checkpoint: dict[str, Any]) -> None:
        queue = self._ensure()
        try:
            queue.put_nowait(checkpoint)
            self._warned_full = False
        except asyncio.QueueFull:
            if not self._warned_full:
                log.warning("stepflow checkpoint buffer full (%d waiting; is the server at %s reachable?): "
                            "requests now wait for room rather than lose checkpoints", self.max_buffer,
                            self.base_url)
                self._warned_full = True
            await queue.put(checkpoint)

    def put_soon(self, checkpoint: dict[str, Any]) -> None:
        """From synchronous code (a step just finished): queue it without waiting."""
        queue = self._ensure()
        try:
            queue.put_nowait(checkpoint)
        except asyncio.QueueFull:
            asyncio.get_running_loop().create_task(self.put(checkpoint))

    async def wait(self, timeout: float | None = None) -> bool:
        """Until every queued checkpoint is stored (True), or `timeout` passes (False)."""
        if self._queue is None:
            return True
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send_forever(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            delay = 0.05
            while True:
                try:
                    await self._post(batch)
                    self.sent += len(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - unreachable server, 5xx: retried, never dropped
                    self.failures += 1
                    log.warning("checkpoint to %s failed (%s); retrying in %.2gs (%d buffered)", self.base_url,
                                exc, delay, queue.qsize() + len(batch))
                    await asyncio.sleep(delay)
                    delay = min(self.retry_max, delay * 2)
            for _ in batch:
                queue.task_done()

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.signing_key}"} if self.signing_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        async with self._session.post(f"{self.base_url}/v1/checkpoints", data=codec.dumps({"checkpoints": batch}),
                                      headers={"Content-Type": "application/json"},
                                      timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status >= 500:
                raise RuntimeError(f"server answered {resp.status}")
            if resp.status >= 400:
                # a checkpoint the server refuses will be refused again: log loudly, do not block the queue
                log.error("stepflow refused checkpoints (%s): %s", resp.status, (await resp.text())[:500])
