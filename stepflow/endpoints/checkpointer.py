"""Background checkpointing for durable endpoints: never on the request path, never lost.

Checkpoints go into a bounded in-memory queue; one sender task posts them to the server in batches, in
order, retrying with backoff while the server is unreachable. When the queue is full, new checkpoints wait
for room (the request that produced them waits — backpressure rather than loss) and a warning says so.
`await wait()` drains the queue, e.g. at shutdown.

While the queue is full, checkpoints line up in an overflow list that one mover task feeds into the queue as
room appears: a step's checkpoint (queued from synchronous code, which cannot wait) and a request's later
checkpoint (which waits for its turn) keep their order — a request's "async" or "response" checkpoint never
overtakes its own steps, or the engine could resume the run without a step that already ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import aiohttp

from stepflow import codec
from stepflow.errors import CheckpointError

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
        # checkpoints waiting for room in the full queue, in order; a future when a put() waits for its turn
        self._overflow: deque[tuple[dict[str, Any], asyncio.Future[None] | None]] = deque()
        self._mover: asyncio.Task[None] | None = None
        self._warned_full = False
        self.sent = 0
        self.failures = 0
        self.refused = 0  # checkpoints the server refused on their own (dropped, logged)

    def _ensure(self) -> asyncio.Queue[dict[str, Any]]:
        if self._queue is None:
            self._queue = asyncio.Queue(self.max_buffer)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_forever(), name="stepflow-checkpoints")
        return self._queue

    def pending(self) -> int:
        """Checkpoints not yet stored by the server (queued, or waiting for room in the queue)."""
        return (self._queue.qsize() if self._queue is not None else 0) + len(self._overflow)

    def _offer(self, checkpoint: dict[str, Any], waiter: asyncio.Future[None] | None) -> bool:
        """Into the queue if it has room and nothing is waiting before it (True); else in line (False)."""
        queue = self._ensure()
        if not self._overflow:
            try:
                queue.put_nowait(checkpoint)
                self._warned_full = False
                return True
            except asyncio.QueueFull:
                pass
        if not self._warned_full:
            log.warning("stepflow checkpoint buffer full (%d waiting; is the server at %s reachable?): "
                        "requests now wait for room rather than lose checkpoints", self.max_buffer,
                        self.base_url)
            self._warned_full = True
        self._overflow.append((checkpoint, waiter))
        if self._mover is None or self._mover.done():
            self._mover = asyncio.create_task(self._move_overflow(), name="stepflow-checkpoint-overflow")
        return False

    async def put(self, checkpoint: dict[str, Any]) -> None:
        """Queue it; when the buffer is full, wait until it (and every checkpoint before it) is queued."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._offer(checkpoint, waiter):
            await waiter

    def put_soon(self, checkpoint: dict[str, Any]) -> None:
        """From synchronous code (a step just finished): queue it without waiting, in order."""
        self._offer(checkpoint, None)

    async def _move_overflow(self) -> None:
        queue = self._ensure()
        while self._overflow:
            checkpoint, waiter = self._overflow[0]
            await queue.put(checkpoint)
            self._overflow.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float | None = None) -> bool:
        """Until every queued checkpoint is stored (True), or `timeout` passes (False)."""
        if self._queue is None:
            return True

        async def drained() -> None:
            assert self._queue is not None
            while True:
                if self._mover is not None and not self._mover.done():
                    await asyncio.shield(self._mover)
                await self._queue.join()
                if not self._overflow:
                    return

        try:
            await asyncio.wait_for(drained(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        for task in (self._sender, self._mover):
            if task is not None:
                task.cancel()
        self._sender = self._mover = None
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
            await self._deliver(batch)
            for _ in batch:
                queue.task_done()

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Post `batch`, retrying while the server is unreachable or failing (5xx).

        A refused batch (4xx) is split and its halves delivered on their own: the server may refuse a batch
        only for one checkpoint in it, or for its size alone (413: checkpoints that piled up during an outage,
        posted together) — dropping the whole batch would lose every other run's checkpoints with it. Only a
        checkpoint refused on its own is dropped, loudly (a request body too large for the server is left out
        of its run instead). Checkpoints are idempotent, so re-posting what a refused batch had applied is safe.
        """
        assert self._queue is not None
        delay = 0.05
        while True:
            try:
                status, text = await self._post(batch)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - unreachable server, 5xx: retried, never dropped
                self.failures += 1
                log.warning("checkpoint to %s failed (%s); retrying in %.2gs (%d buffered)", self.base_url,
                            exc, delay, self._queue.qsize() + len(batch))
                await asyncio.sleep(delay)
                delay = min(self.retry_max, delay * 2)
        if status < 400:
            self.sent += len(batch)
        elif len(batch) > 1:
            half = len(batch) // 2
            await self._deliver(batch[:half])
            await self._deliver(batch[half:])
        elif status == 413 and (smaller := _without_body(batch[0])) is not None:
            await self._deliver([smaller])
        else:
            # a checkpoint the server refuses will be refused again: log loudly, do not block the queue
            self.refused += 1
            log.error("stepflow refused a checkpoint (%s): %s", status, text[:500])

    async def call(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Post one checkpoint now, outside the queue, and return the server's result for it. Only for what a
        request must wait for to go on (the ids of events it sends); raises CheckpointError if it fails."""
        session = self._client()
        try:
            async with session.post(f"{self.base_url}/v1/checkpoints",
                                    data=codec.dumps({"checkpoints": [checkpoint]}),
                                    headers={"Content-Type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=30)) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CheckpointError(f"the stepflow server at {self.base_url} is not reachable: {exc}") from exc
        try:
            document = codec.loads(raw)
        except codec.JSONDecodeError:
            document = None
        if status >= 400 or not isinstance(document, dict) or not isinstance(document.get("data"), list):
            error = document.get("error") if isinstance(document, dict) else None
            message = error.get("message") if isinstance(error, dict) else raw[:300].decode(errors="replace")
            raise CheckpointError(f"the stepflow server answered {status}: {message}")
        result: dict[str, Any] = document["data"][0]
        return result

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.signing_key}"} if self.signing_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def _post(self, batch: list[dict[str, Any]]) -> tuple[int, str]:
        """The server's status and text; raises for what must be retried (unreachable, 5xx)."""
        async with self._client().post(f"{self.base_url}/v1/checkpoints", data=codec.dumps({"checkpoints": batch}),
                                      headers={"Content-Type": "application/json"},
                                      timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status >= 500:
                raise CheckpointError(f"the stepflow server answered {resp.status}")
            return resp.status, (await resp.text() if resp.status >= 400 else "")


def _without_body(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """A 'run' checkpoint without the request body it records (None if it has none): the run is kept when
    the body alone makes it larger than the server accepts."""
    data = (checkpoint.get("event") or {}).get("data")
    if checkpoint.get("op") != "run" or not isinstance(data, dict) or "body" not in data:
        return None
    kept = {k: v for k, v in data.items() if k not in ("body", "body_encoding")}
    kept["body_omitted"] = "larger than the stepflow server accepts"
    return {**checkpoint, "event": {**checkpoint["event"], "data": kept}}
