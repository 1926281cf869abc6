"""The local Lambda: Invoke API for callers, Runtime API for warm worker processes running awslambdaric."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from stepflow import codec
from stepflow.lambda_local.functions import LocalFunction, discover_functions

log = logging.getLogger("stepflow.lambda")
MAX_PAYLOAD = 6 * 1024 * 1024
RUNTIME = "/2018-06-01/runtime"


@dataclass(slots=True)
class Pending:
    """One invocation: its event, and the future its answer lands in: (payload bytes, function error or None)."""

    request_id: str
    payload: bytes
    deadline_ms: int
    future: asyncio.Future[tuple[bytes, str | None]]


@dataclass(slots=True)
class Worker:
    fn: LocalFunction
    process: asyncio.subprocess.Process | None = None
    runner: web.AppRunner | None = None
    port: int = 0
    current: Pending | None = None
    idle: bool = False
    dead: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def _function_error(error_type: str, message: str) -> bytes:
    return codec.dumps({"errorType": error_type, "errorMessage": message})


class FunctionPool:
    """Warm workers of one function, pulling invocations from a shared queue."""

    def __init__(self, fn: LocalFunction, max_workers: int) -> None:
        self.fn = fn
        self.max_workers = max_workers
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.workers: list[Worker] = []

    async def invoke(self, payload: bytes) -> tuple[bytes, str | None]:
        now_ms = int(time.time() * 1000)
        pending = Pending(request_id=str(uuid.uuid4()), payload=payload,
                          deadline_ms=now_ms + int(self.fn.timeout * 1000),
                          future=asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        if not any(w.idle for w in self.workers) and len([w for w in self.workers if not w.dead]) < self.max_workers:
            await self._spawn()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self.fn.timeout)
        except TimeoutError:
            # as AWS does: the sandbox is torn down and the caller gets a function error
            for worker in self.workers:
                if worker.current is pending:
                    await self._kill(worker)
            if not pending.future.done():
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                pending.future.set_result((_function_error(
                    "Sandbox.Timedout", f"{stamp} {pending.request_id} Task timed out after "
                    f"{self.fn.timeout:.2f} seconds"), "Unhandled"))
            return pending.future.result()

    async def _spawn(self) -> None:
        worker = Worker(fn=self.fn)
        app = web.Application(client_max_size=MAX_PAYLOAD * 2)
        app.router.add_get(f"{RUNTIME}/invocation/next", functools.partial(self._next, worker))
        app.router.add_post(f"{RUNTIME}/invocation/{{rid}}/response", functools.partial(self._response, worker))
        app.router.add_post(f"{RUNTIME}/invocation/{{rid}}/error", functools.partial(self._error, worker))
        app.router.add_post(f"{RUNTIME}/init/error", functools.partial(self._init_error, worker))
        # a short shutdown: the worker's /next long-poll is still open when it is retired
        worker.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await worker.runner.setup()
        site = web.TCPSite(worker.runner, "127.0.0.1", 0)
        await site.start()
        worker.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        env = {**os.environ, **self.fn.environment,
               "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{worker.port}",
               "AWS_LAMBDA_FUNCTION_NAME": self.fn.name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.fn.memory), "_HANDLER": self.fn.handler,
               "LAMBDA_TASK_ROOT": str(self.fn.code_dir), "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
               "PYTHONPATH": str(self.fn.code_dir), "PYTHONDONTWRITEBYTECODE": "1"}
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "awslambdaric", self.fn.handler, cwd=self.fn.code_dir, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        worker.tasks = [asyncio.create_task(self._watch(worker)), asyncio.create_task(self._drain(worker))]
        self.workers.append(worker)
        log.info("function %s: started worker pid %s", self.fn.name, worker.process.pid)

    async def _drain(self, worker: Worker) -> None:
        assert worker.process is not None and worker.process.stdout is not None
        async for line in worker.process.stdout:
            log.info("[%s %s] %s", self.fn.name, worker.process.pid, line.decode(errors="replace").rstrip())

    async def _watch(self, worker: Worker) -> None:
        assert worker.process is not None
        code = await worker.process.wait()
        worker.dead = True
        current = worker.current
        if current is not None and not current.future.done():
            current.future.set_result((_function_error(
                "Runtime.ExitError", f"RequestId: {current.request_id} Error: Runtime exited with error: "
                f"exit status {code}"), "Unhandled"))
        await self._retire(worker)

    async def _retire(self, worker: Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.runner is not None:
            runner, worker.runner = worker.runner, None
            await runner.cleanup()
        # invocations still queued with no live worker to take them: start one
        if self.max_workers and not self.queue.empty() and not any(not w.dead for w in self.workers):
            await self._spawn()

    async def _kill(self, worker: Worker) -> None:
        if worker.process is not None and worker.process.returncode is None:
            try:
                os.killpg(worker.process.pid, 9)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        self.max_workers = 0  # nothing new starts while stopping
        workers = list(self.workers)
        for worker in workers:
            await self._kill(worker)
        for worker in workers:
            if worker.tasks:  # the watcher retires the worker once its process has exited
                await asyncio.wait(worker.tasks, timeout=5)
            for task in worker.tasks:
                task.cancel()
            await self._retire(worker)

    # --- the Runtime API, as the worker sees it -----------------------------------------------------------

    async def _next(self, worker: Worker, request: web.Request) -> web.StreamResponse:
        worker.current = None
        worker.idle = True
        try:
            pending = await self.queue.get()
        finally:
            worker.idle = False
        while pending.future.done():  # timed out while queued
            pending = await self.queue.get()
        worker.current = pending
        return web.Response(body=pending.payload, content_type="application/json", headers={
            "Lambda-Runtime-Aws-Request-Id": pending.request_id,
            "Lambda-Runtime-Deadline-Ms": str(pending.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.fn.arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0"})

    def _finish(self, worker: Worker, request_id: str, payload: bytes, error: str | None) -> web.Response:
        current = worker.current
        if current is None or current.request_id != request_id:
            return web.json_response({"errorMessage": "unknown request id", "errorType": "InvalidRequestID"},
                                     status=400)
        if not current.future.done():
            if error is None and len(payload) > MAX_PAYLOAD:
                payload, error = _function_error(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size ({len(payload)} bytes) exceeded maximum allowed payload size "
                    f"({MAX_PAYLOAD} bytes)."), "Unhandled"
            current.future.set_result((payload, error))
        worker.current = None
        return web.json_response({"status": "OK"}, status=202)

    async def _response(self, worker: Worker, request: web.Request) -> web.Response:
        return self._finish(worker, request.match_info["rid"], await request.read(), None)

    async def _error(self, worker: Worker, request: web.Request) -> web.Response:
        return self._finish(worker, request.match_info["rid"], await request.read(), "Unhandled")

    async def _init_error(self, worker: Worker, request: web.Request) -> web.Response:
        payload = await request.read()
        log.warning("function %s: init error: %s", self.fn.name, payload[:500].decode(errors="replace"))
        # the invocation that caused this cold start gets the init error, as on AWS
        while not self.queue.empty():
            pending = self.queue.get_nowait()
            if not pending.future.done():
                pending.future.set_result((payload, "Unhandled"))
                break
        return web.json_response({"status": "OK"}, status=202)


class LocalLambda:
    """The Invoke API over the functions found in a directory."""

    def __init__(self, directory: Path, *, max_workers: int = 4) -> None:
        # zips are unpacked here, and removed when the local Lambda stops
        self._unpacked = tempfile.TemporaryDirectory(prefix="stepflow-lambda-")
        self.functions = discover_functions(directory, unpack_to=Path(self._unpacked.name))
        self.pools = {name: FunctionPool(fn, max_workers) for name, fn in self.functions.items()}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_PAYLOAD * 2)
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        app.on_cleanup.append(lambda _: self.stop())
        return app

    async def stop(self) -> None:
        for pool in self.pools.values():
            await pool.stop()
        self._unpacked.cleanup()

    @staticmethod
    def _aws_error(status: int, error_type: str, message: str) -> web.Response:
        return web.json_response({"Type": "User", "message": message}, status=status,
                                 headers={"x-amzn-ErrorType": error_type})

    async def _invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        short = name.split(":function:")[-1].split(":")[0]
        pool = self.pools.get(short)
        if pool is None:
            return self._aws_error(404, "ResourceNotFoundException",
                                   f"Function not found: arn:aws:lambda:us-east-1:000000000000:function:{short}")
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type != "RequestResponse":
            return self._aws_error(400, "InvalidParameterValueException",
                                   f"the local Lambda supports only RequestResponse, not {invocation_type}")
        payload = await request.read()
        if len(payload) > MAX_PAYLOAD:
            return self._aws_error(413, "RequestTooLargeException",
                                   f"Request must be smaller than {MAX_PAYLOAD} bytes for the InvokeFunction "
                                   "operation")
        body, error = await pool.invoke(payload or b"{}")
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if error:
            headers["X-Amz-Function-Error"] = error
        return web.Response(body=body, headers=headers, content_type="application/json")


async def serve(directory: Path, host: str, port: int, max_workers: int, announce: Any = print) -> None:
    local = LocalLambda(directory, max_workers=max_workers)
    runner = web.AppRunner(local.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    announce(f"local Lambda on http://{host}:{port} (set STEPFLOW_LAMBDA_ENDPOINT to it)")
    for fn in local.functions.values():
        announce(f"  {fn.name}: handler {fn.handler}, timeout {fn.timeout:g}s, code {fn.code_dir}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop the workers cleanly, whatever stops us
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
