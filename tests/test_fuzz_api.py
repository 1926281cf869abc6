"""Fuzzing the HTTP API with schemathesis against a live stepflow server: no 500, and every answer conforms to the
OpenAPI document the server publishes (`GET /openapi.json`, stepflow/server/openapi.py).

One test per operation of the document, each against a fresh server on 127.0.0.1 (in this process, in its own
thread and event loop, on the store of STEPFLOW_TEST_BACKEND: SQLite by default, PostgreSQL with
STEPFLOW_TEST_BACKEND=postgres). Every server is seeded with the records the document's examples name (the event
`upload-77`, the run `01M7YMF5T93TC44BZ81MWT604Q`, …) so that the examples and the fuzzer reach stored data,
not only 404s.

The budget is fixed and the run reproducible: a fixed seed, derandomized generation, no example database, and
at most FUZZ_MAX_EXAMPLES generated cases per operation (on top of the document's examples and schemathesis'
coverage cases, positive and negative). Raise it locally with STEPFLOW_FUZZ_MAX_EXAMPLES=500 for a deeper run.

A failure names the request (schemathesis prints a curl command to reproduce it) and carries the tracebacks
the server logged while answering it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

import requests
from aiohttp import web
from conftest import free_port, make_store, workflow_config
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stepflow import parse_function
from stepflow.engine import EngineConfig, EngineCore
from stepflow.server import ServerSettings, create_app
from stepflow.server.http_protocol import StepflowAppRunner
from stepflow.server.openapi import (
    EXAMPLE_EVENT_ID,
    EXAMPLE_FN_ID,
    EXAMPLE_IDEMPOTENCY_KEY,
    EXAMPLE_RUN_ID,
    document,
)
from stepflow.tokens import make_token

FUZZ_SEED = 20261121
FUZZ_MAX_EXAMPLES = int(os.environ.get("STEPFLOW_FUZZ_MAX_EXAMPLES", "40"))
REQUEST_TIMEOUT = 45.0   # the longest a documented call may block is the output URL's 30 s

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]

CONFIG = SchemathesisConfig.from_dict({
    "seed": FUZZ_SEED,
    "generation": {"mode": "all", "max-examples": FUZZ_MAX_EXAMPLES, "deterministic": True, "database": "none"},
})
SCHEMA = schemathesis.openapi.from_dict(document(), config=CONFIG)

SEED_EVENT = "fuzz/seed"
SECOND_RUN_ID = "01M7YMGEB58N7CH4CGZQDK687Z"    # a cancelled run


class ServerLog(logging.Handler):
    """Keeps every record the server logs with an exception: the tracebacks behind a 500."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.tracebacks.append(text)


@dataclass
class LiveServer:
    url: str
    run_ids: list[str]
    log: ServerLog
    session: requests.Session = field(default_factory=requests.Session)


class ServerThread:
    """A stepflow server in its own thread and event loop, so that the (blocking) fuzzer can call it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stepflow-fuzz-server", daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.engine: EngineCore | None = None

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self, tmp_path: Path) -> str:
        store = await make_store(tmp_path, "fuzz")
        self.engine = EngineCore(store, EngineConfig(backoff_base=0.01, backoff_max=0.05, poll_interval=0.2))
        await self.engine.start()
        # a workflow whose only step cannot be reached: its runs fail quickly, with step errors to show
        await self.engine.register(parse_function(workflow_config(
            {"s": {"runtime": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/down"}, "retries": 1}},
            id="fuzz-seed", event=SEED_EVENT), source="test_fuzz_api"))
        settings = ServerSettings(dev=True)
        self.runner = StepflowAppRunner(create_app(self.engine, settings), access_log=None,
                                        header_timeout=settings.header_timeout)  # as `stepflow dev` serves
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.engine is not None:
            await self.engine.stop(grace=1.0)

    def close(self) -> None:
        try:
            self.call(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def seed(server: LiveServer) -> None:
    """The records the document's examples name, through the API itself."""
    s, url = server.session, server.url

    def ok(resp: requests.Response) -> Any:
        assert resp.status_code == 200, resp.text
        return resp.json()

    ok(s.post(f"{url}/e/dev", json=[{"name": SEED_EVENT, "id": EXAMPLE_EVENT_ID, "data": {"file": "a.csv"},
                                     "user": {"id": "u_42"}, "v": "2024-01-01.1", "ts": 1714056405337},
                                    {"name": "fuzz/nothing", "data": {}}]))
    for run_id, result in ((EXAMPLE_RUN_ID, {"status_code": 201, "headers": {"Content-Type": "application/json"},
                                              "body": '{"charged": 42}', "duration_ms": 3}),
                           (SECOND_RUN_ID, None)):
        checkpoints: list[dict[str, Any]] = [
            {"op": "run", "run_id": run_id, "fn_id": EXAMPLE_FN_ID, "app_id": "fuzz-api",
             "url": "http://127.0.0.1:9/checkout", "method": "POST", "event": {"data": {"amount": 42}},
             "idempotency": EXAMPLE_IDEMPOTENCY_KEY if result else None, "started_at": int(time.time() * 1000)},
            {"op": "steps", "run_id": run_id, "steps": [{"op": "StepRun", "id": "charge", "data": {"ok": True}}]},
        ]
        if result:
            checkpoints.append({"op": "response", "run_id": run_id, "result": result})
        ok(s.post(f"{url}/v1/checkpoints", json={"checkpoints": checkpoints}))
    ok(s.delete(f"{url}/v1/runs/{SECOND_RUN_ID}"))
    runs = ok(s.get(f"{url}/v1/events/{EXAMPLE_EVENT_ID}/runs", params={"wait": "20s"}))["data"]
    assert [r["status"] for r in runs] == ["Failed"], runs   # every seeded run has ended: no wait can block
    server.run_ids.extend([EXAMPLE_RUN_ID, SECOND_RUN_ID, runs[0]["run_id"]])


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    log = ServerLog()
    logger = logging.getLogger("stepflow")
    logger.addHandler(log)
    thread = ServerThread()
    try:
        url = thread.call(thread.start(tmp_path))
        server = LiveServer(url=url, run_ids=[], log=log)
        seed(server)
        log.tracebacks.clear()
        yield server
        server.session.close()
    finally:
        logger.removeHandler(log)
        thread.close()


def call_and_validate(case: Any, server: LiveServer) -> None:
    start = len(server.log.tracebacks)
    try:
        case.call_and_validate(base_url=server.url, session=server.session, checks=CHECKS, timeout=REQUEST_TIMEOUT)
    except BaseException as exc:
        logged = server.log.tracebacks[start:]
        if logged:
            exc.add_note("the server logged:\n" + "\n".join(logged))
        raise


@SCHEMA.parametrize()  # type: ignore[untyped-decorator]
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz(case: Any, live_server: LiveServer) -> None:
    call_and_validate(case, live_server)


def test_the_seeded_output_url_replays_the_response(live_server: LiveServer) -> None:
    """The one answer the fuzzer cannot reach (it needs a token): the replayed response of a durable endpoint."""
    token = make_token(EXAMPLE_RUN_ID, None)
    case = SCHEMA["/v1/runs/{run_id}/output"]["GET"].Case(path_parameters={"run_id": EXAMPLE_RUN_ID},
                                                          query={"token": token})
    response = case.call(base_url=live_server.url, timeout=REQUEST_TIMEOUT)
    assert response.status_code == 201
    assert response.json() == {"charged": 42}
    assert response.headers["x-run-id"] == [EXAMPLE_RUN_ID]


# Requests that made the server fail, found by this fuzzer (and by probing what it pointed at), kept as fixed
# cases checked exactly as the fuzzer checks its own. Each is `(setup requests, the checked request)`; the
# setup requests must not fail either. They fail until the server is fixed, then guard against a regression.
R = "01ARZ3NDEKTSV4RRFFQ69G5FB1"
CHECKPOINT_RUN = {"op": "run", "run_id": R, "fn_id": "POST /regress", "app_id": "fuzz-api",
                  "url": "http://127.0.0.1:9/regress"}
FAR_FUTURE = 10 ** 16   # ms since the epoch: the year 318857, past what an ISO 8601 timestamp can say
REGRESSIONS: dict[str, tuple[list[tuple[str, str, dict[str, Any]]], tuple[str, str, dict[str, Any]]]] = {
    # a token whose expiry holds a non-ASCII digit: str.isdigit() accepts '²', int() does not
    "output-token-non-ascii-digit": ([], ("GET", "/v1/runs/{run_id}/output",
                                          {"path_parameters": {"run_id": EXAMPLE_RUN_ID}, "query": {"token": "².ab"}})),
    # a 'run' checkpoint accepts any whole `started_at`; the run can then not be shown, and every run listing
    # that includes it fails (GET /v1/runs, /v2/runs answer 500 for everyone)
    "checkpoint-started-at-far-future-get": (
        [("POST", "/v1/checkpoints", {"body": {"checkpoints": [{**CHECKPOINT_RUN, "started_at": FAR_FUTURE}]}})],
        ("GET", "/v1/runs/{run_id}", {"path_parameters": {"run_id": R}})),
    "checkpoint-started-at-far-future-list": (
        [("POST", "/v1/checkpoints", {"body": {"checkpoints": [{**CHECKPOINT_RUN, "started_at": FAR_FUTURE}]}})],
        ("GET", "/v2/runs", {})),
    "checkpoint-started-at-far-future-event-runs": (
        [("POST", "/v1/checkpoints", {"body": {"checkpoints": [{**CHECKPOINT_RUN, "started_at": FAR_FUTURE}]}})],
        ("GET", "/v1/events/{event_id}/runs", {"path_parameters": {"event_id": R}})),
    # U+0000 in strings that reach PostgreSQL text columns/parameters (SQLite stores them)
    "postgres-nul-in-function-id-filter": ([], ("GET", "/v1/runs", {"query": {"function_id": "a\x00b"}})),
    "postgres-nul-in-idempotency-lookup": ([], ("GET", "/v1/checkpoints/idempotency",
                                                {"query": {"fn_id": "f\x00", "key": "k\x00"}})),
    "postgres-nul-in-checkpoint-idempotency": ([], ("POST", "/v1/checkpoints", {"body": {"checkpoints": [
        {**CHECKPOINT_RUN, "idempotency": "k\x00"}]}})),
    "postgres-nul-in-sync-app-name": ([], ("POST", "/fn/register", {"body": {"appName": "app\x00", "functions": [
        {"id": "f", "steps": {"step": {"runtime": {"type": "http", "url": "http://127.0.0.1:9/api"}}}}]}})),
    # a request the HTTP parser refuses, on a route of the official SDKs: answered in the REST error shape
    # ({"error": {"code", "message"}}) where these routes promise {"error": "<message>", "code", "status"}
    "sdk-route-http-parser-error-shape": ([], ("POST", "/fn/register", {"headers": {"Transfer-Encoding": "}"},
                                                                        "body": {"app_id": "a", "functions": []}})),
    "postgres-nul-in-event-name": ([], ("POST", "/e/{event_key}", {"path_parameters": {"event_key": "dev"},
                                                                 "body": {"name": "a\x00b"}})),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_fuzz_regressions(name: str, live_server: LiveServer) -> None:
    setup, (method, path, parts) = REGRESSIONS[name]
    for setup_method, setup_path, setup_parts in setup:
        call_and_validate(SCHEMA[setup_path][setup_method].Case(**setup_parts), live_server)
    call_and_validate(SCHEMA[path][method].Case(**parts), live_server)
