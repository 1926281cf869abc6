"""REST API v1 and v2 over raw HTTP against a real server: events, runs, steps, cancel, listing with filters
and cursors, long-poll `?wait=`, auth, and the JSON error body of every failure. v2 run objects are
validated against the InngestRun JSON Schema (runtimes/schemas/inngest-run.schema.json)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from conftest import RunningServer, ServerFactory, StepServer, free_port, workflow_config

from stepflow import Client, codec
from stepflow.engine import EngineConfig, EngineCore
from stepflow.ids import is_ulid, new_ulid
from stepflow.server import ServerSettings, create_app
from stepflow.store import SqliteStore

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "runtimes" / "schemas" / "inngest-run.schema.json"
V1_RUN_FIELDS = {"run_id", "run_started_at", "function_id", "function_version", "environment_id", "event_id",
                 "status", "ended_at", "output"}
V1_STATUSES = {"Queued", "Running", "Completed", "Failed", "Cancelled", "Paused"}


# --- helpers -----------------------------------------------------------------------------------------------


@dataclass
class Api:
    """Raw HTTP calls to one server, with its signing key unless told otherwise."""

    http: aiohttp.ClientSession
    server: RunningServer

    async def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                   auth: bool = True) -> tuple[int, Any]:
        sent = dict(headers or {})
        if auth and self.server.settings.signing_keys and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {self.server.settings.signing_keys[0]}"
        async with self.http.request(method, self.server.url + path, headers=sent) as resp:
            raw = await resp.read()
            assert resp.content_type == "application/json", (resp.status, raw[:300])
            return resp.status, codec.loads(raw)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kwargs)

    async def ok(self, path: str) -> Any:
        status, body = await self.get(path)
        assert status == 200, body
        return body


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def api(stepflow: RunningServer, http: aiohttp.ClientSession) -> Api:
    return Api(http, stepflow)


@pytest.fixture(scope="module")
def run_schema() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    # jsonschema checks "date-time" only when rfc3339-validator is installed; without it the format would
    # silently pass, and this test would prove nothing about the timestamps.
    assert "date-time" in checker.checkers, "install rfc3339-validator so 'date-time' formats are checked"
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def assert_error(status: int, body: Any, expected: int, code: str | None = None, *needles: str) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    for needle in needles:
        assert needle in body["error"]["message"], f"{needle!r} not in {body['error']['message']!r}"


def parse_iso(value: str) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value)


def assert_v1_run(run: dict[str, Any]) -> None:
    expected = V1_RUN_FIELDS | ({"error"} if run["status"] == "Failed" else set())
    assert set(run) == expected, sorted(run)
    assert is_ulid(run["run_id"])
    assert run["status"] in V1_STATUSES
    assert isinstance(run["function_version"], int) and run["function_version"] >= 1
    parse_iso(run["run_started_at"])
    if run["status"] in ("Completed", "Failed", "Cancelled"):
        assert parse_iso(run["ended_at"]) >= parse_iso(run["run_started_at"])
    else:
        assert run["ended_at"] is None


StepHandler = Callable[[dict[str, Any], web.Request], Awaitable[web.StreamResponse]]


def answer(body: Any, status: int = 200, *, delay: float = 0.0) -> StepHandler:
    async def handler(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"status": status, "body": body})

    return handler


def held_until(release: asyncio.Event, body: Any = None) -> StepHandler:
    """A step that answers only once `release` is set (at most 10 s), so a test controls when a run ends."""
    async def handler(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        try:
            await asyncio.wait_for(release.wait(), 10)
        except TimeoutError:
            pass
        return web.json_response({"status": 200, "body": body})

    return handler


async def declare(server: RunningServer, step_server: StepServer, id: str, steps: dict[str, StepHandler],
                  *, event: str | None = None, chain: bool = True, **extra: Any) -> None:
    """A workflow `id` whose steps run one after another (when `chain`), served at /<id>/<step>."""
    config: dict[str, Any] = {}
    previous = None
    for sid, handler in steps.items():
        url = step_server.route(f"/{id}/{sid}", handler)
        config[sid] = {"runtime": {"type": "http", "url": url}}
        if chain and previous is not None:
            config[sid]["after"] = [{"step": previous}]
        previous = sid
    await server.register(workflow_config(config, id=id, event=event or f"test/{id}", **extra))


async def start(server: RunningServer, name: str, data: dict[str, Any] | None = None) -> tuple[str, str]:
    """Send one event that starts exactly one run; returns (event id, run id)."""
    [event_id] = await server.client.send({"name": name, "data": data or {}})
    runs = await server.client.get_event_runs(event_id)
    assert len(runs) == 1, runs
    return event_id, runs[0]["run_id"]


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def step_called(step_server: StepServer, path: str) -> bool:
    return path in step_server.calls


# --- events and runs, v1 -----------------------------------------------------------------------------------


async def test_completed_run_through_event_run_and_steps(api: Api, stepflow: RunningServer,
                                                         step_server: StepServer) -> None:
    await declare(stepflow, step_server, "csv", {
        "parse": answer({"processedItems": 98, "failedItems": 2}),
        "report": answer({"status": "success", "processedItems": 98, "failedItems": 2}),
    })
    before = time.time()
    event_id, run_id = await start(stepflow, "test/csv", {"file": "upload.csv"})
    await stepflow.client.wait_for_run(run_id, timeout=10)

    event = (await api.ok(f"/v1/events/{event_id}"))["data"]
    assert event["id"] == event_id and event["name"] == "test/csv" and event["data"] == {"file": "upload.csv"}
    assert abs(parse_iso(event["received_at"]).timestamp() - before) < 5

    envelope = await api.ok(f"/v1/events/{event_id}/runs")
    assert set(envelope) == {"data"} and len(envelope["data"]) == 1
    [run] = envelope["data"]
    assert_v1_run(run)
    assert run["run_id"] == run_id and run["event_id"] == event_id
    assert run["function_id"] == "csv" and run["function_version"] == 1 and run["environment_id"] == "local"
    assert run["status"] == "Completed"
    assert run["output"] == {"status": "success", "processedItems": 98, "failedItems": 2}

    single = await api.ok(f"/v1/runs/{run_id}")
    assert set(single) == {"data"} and single["data"] == run
    # run ids are case-insensitive (ULIDs are), answered in their canonical upper case
    assert (await api.ok(f"/v1/runs/{run_id.lower()}"))["data"] == run

    steps = (await api.ok(f"/v1/runs/{run_id}/steps"))["data"]
    assert [s["step_id"] for s in steps] == ["parse", "report"]
    for step, body in zip(steps, [{"processedItems": 98, "failedItems": 2}, run["output"]], strict=True):
        assert {"step_id", "status", "attempts", "started_at", "ended_at", "output", "error"} <= set(step)
        assert step["status"] == "completed" and step["attempts"] == 1
        assert step["output"] == {"status": 200, "body": body} and step["error"] is None
        assert parse_iso(step["started_at"]) <= parse_iso(step["ended_at"])
    assert parse_iso(steps[0]["ended_at"]) <= parse_iso(steps[1]["started_at"])
    assert parse_iso(steps[1]["ended_at"]) <= parse_iso(run["ended_at"])


async def test_failed_run_has_an_error_and_its_steps_show_why(api: Api, stepflow: RunningServer,
                                                              step_server: StepServer) -> None:
    await declare(stepflow, step_server, "bad", {"check": answer({"reason": "no such file"}, 400),
                                                 "never": answer({})})
    _, run_id = await start(stepflow, "test/bad")
    await stepflow.client.wait_for_run(run_id, timeout=10)

    run = (await api.ok(f"/v1/runs/{run_id}"))["data"]
    assert_v1_run(run)
    assert run["status"] == "Failed" and run["output"] is None
    assert run["error"]["step_id"] == "check" and run["error"]["status"] == 400
    assert run["error"]["body"] == {"reason": "no such file"}
    assert "400" in run["error"]["message"]

    steps = (await api.ok(f"/v1/runs/{run_id}/steps"))["data"]
    by_id = {s["step_id"]: s for s in steps}
    assert by_id["check"]["status"] == "failed" and by_id["check"]["attempts"] == 1  # 4xx: no retry
    assert by_id["check"]["output"] is None
    assert by_id["check"]["error"]["status"] == 400 and by_id["check"]["error"]["code"] == "step_error"
    assert "never" not in by_id or by_id["never"]["status"] != "completed"
    assert "/bad/never" not in step_server.calls


async def test_steps_show_retries_and_skips(api: Api, stepflow: RunningServer, step_server: StepServer) -> None:
    tries = {"n": 0}

    async def flaky(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        tries["n"] += 1
        if tries["n"] == 1:
            return web.json_response({"status": 503, "body": {"busy": True}})
        return web.json_response({"status": 200, "body": {"n": tries["n"]}})

    a = step_server.route("/flaky", flaky)
    b = step_server.json("/b", {"status": 200, "body": "b"})
    await stepflow.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": a}},
        "b": {"runtime": {"type": "http", "url": b}, "after": [{"step": "a", "if": "response.body.n > 5"}]},
    }))
    _, run_id = await start(stepflow, "test/go")
    run = await stepflow.client.wait_for_run(run_id, timeout=10)
    assert run["status"] == "Completed" and run["output"] == {"n": 2}
    steps = {s["step_id"]: s for s in (await api.ok(f"/v1/runs/{run_id}/steps"))["data"]}
    assert steps["a"]["status"] == "completed" and steps["a"]["attempts"] == 2
    assert steps["a"]["output"] == {"status": 200, "body": {"n": 2}} and steps["a"]["error"] is None
    assert steps["b"]["status"] == "skipped" and steps["b"]["attempts"] == 0
    assert steps["b"]["output"] is None and steps["b"]["error"]["code"] == "skipped"


async def test_event_runs_list_every_run_of_a_fan_out(api: Api, stepflow: RunningServer,
                                                      step_server: StepServer) -> None:
    await declare(stepflow, step_server, "one", {"s": answer(1)}, event="test/fan")
    await declare(stepflow, step_server, "two", {"s": answer(2)}, event="test/fan")
    [event_id] = await stepflow.client.send({"name": "test/fan"})
    runs = (await api.ok(f"/v1/events/{event_id}/runs"))["data"]
    assert sorted(r["function_id"] for r in runs) == ["one", "two"]
    for run in runs:
        assert_v1_run(run)
        done = await stepflow.client.wait_for_run(run["run_id"], timeout=10)
        assert done["output"] == (1 if run["function_id"] == "one" else 2)


# --- cancel ------------------------------------------------------------------------------------------------


async def test_cancel_during_a_step_stops_the_run_after_it(api: Api, stepflow: RunningServer,
                                                           step_server: StepServer) -> None:
    await declare(stepflow, step_server, "slow", {"first": answer({"one": 1}, delay=1.0),
                                                  "second": answer({"two": 2})})
    _, run_id = await start(stepflow, "test/slow")
    await until(lambda: step_called(step_server, "/slow/first"))
    assert (await api.ok(f"/v1/runs/{run_id}"))["data"]["status"] == "Running"

    status, cancelled = await api.call("DELETE", f"/v1/runs/{run_id}")
    assert status == 200, cancelled
    assert_v1_run(cancelled["data"])
    assert cancelled["data"]["status"] == "Cancelled" and cancelled["data"]["ended_at"] is not None

    # the step that was running may finish, but nothing after it runs and the run stays Cancelled
    async def first_ended() -> bool:
        steps = (await api.ok(f"/v1/runs/{run_id}/steps"))["data"]
        return steps[0]["ended_at"] is not None

    await until(first_ended)
    await asyncio.sleep(0.3)  # time enough for a wrongly scheduled second step to be claimed
    run = (await api.ok(f"/v1/runs/{run_id}"))["data"]
    assert run["status"] == "Cancelled" and run["output"] is None
    assert run["ended_at"] == cancelled["data"]["ended_at"]
    assert "/slow/second" not in step_server.calls
    steps = {s["step_id"]: s for s in (await api.ok(f"/v1/runs/{run_id}/steps"))["data"]}
    assert steps["first"]["output"] == {"status": 200, "body": {"one": 1}}  # kept for the record
    assert "second" not in steps or steps["second"]["status"] == "cancelled"

    # cancelling again changes nothing
    status, again = await api.call("DELETE", f"/v1/runs/{run_id}")
    assert status == 200 and again["data"] == run


async def test_the_in_flight_step_of_a_cancelled_run_does_not_stay_running(
        api: Api, stepflow: RunningServer, step_server: StepServer) -> None:
    await declare(stepflow, step_server, "slow", {"first": answer({"one": 1}, delay=0.5),
                                                  "second": answer({"two": 2})})
    _, run_id = await start(stepflow, "test/slow")
    await until(lambda: step_called(step_server, "/slow/first"))
    await api.call("DELETE", f"/v1/runs/{run_id}")

    async def first_ended() -> bool:
        return (await api.ok(f"/v1/runs/{run_id}/steps"))["data"][0]["ended_at"] is not None

    await until(first_ended)
    first = (await api.ok(f"/v1/runs/{run_id}/steps"))["data"][0]
    # it finished after the cancel: it shows how it ended, not "running" forever
    assert first["step_id"] == "first" and first["status"] == "completed", first
    assert first["output"] == {"status": 200, "body": {"one": 1}}
    assert (await api.ok(f"/v1/runs/{run_id}"))["data"]["status"] == "Cancelled"


@pytest.fixture
async def api_only(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[Api]:
    """A server whose engine runs no workers (an API-only process, as in a scale-out deployment): the runs
    it starts stay Queued until a worker engine on the same database claims them."""
    settings = ServerSettings(dev=True)
    db = tmp_path / "shared.db"
    engine = EngineCore(SqliteStore(db), EngineConfig(), run_workers=False)
    await engine.start()
    runner = web.AppRunner(create_app(engine, settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    client = Client(url)
    yield Api(http, RunningServer(url=url, engine=engine, client=client, settings=settings, db_path=db))
    await client.close()
    await runner.cleanup()
    await engine.stop(grace=1.0)


async def test_queued_runs_and_cancelling_one_before_any_step_runs(
        api_only: Api, stepflow_factory: ServerFactory, step_server: StepServer,
        run_schema: jsonschema.protocols.Validator) -> None:
    api = api_only
    await declare(api.server, step_server, "later", {"s": answer({"ran": True})})
    _, kept = await start(api.server, "test/later")
    _, cancelled_id = await start(api.server, "test/later")

    for run_id in (kept, cancelled_id):
        run = (await api.ok(f"/v1/runs/{run_id}"))["data"]
        assert_v1_run(run)
        assert run["status"] == "Queued" and run["ended_at"] is None and run["output"] is None
        v2 = (await api.ok(f"/v2/runs/{run_id}"))["data"]
        run_schema.validate(v2)
        assert v2["status"] == "QUEUED" and "started_at" not in v2 and "ended_at" not in v2
    queued = (await api.ok("/v1/runs?status=Queued"))["data"]
    assert [r["run_id"] for r in queued] == [cancelled_id, kept]

    status, cancelled = await api.call("DELETE", f"/v1/runs/{cancelled_id}")
    assert status == 200
    assert_v1_run(cancelled["data"])
    assert cancelled["data"]["status"] == "Cancelled" and cancelled["data"]["ended_at"] is not None
    steps = (await api.ok(f"/v1/runs/{cancelled_id}/steps"))["data"]
    assert [(s["step_id"], s["status"], s["attempts"]) for s in steps] == [("s", "cancelled", 0)]
    run_schema.validate((await api.ok(f"/v2/runs/{cancelled_id}"))["data"])

    # a worker engine on the same database runs what is queued, and nothing of the cancelled run
    worker = await stepflow_factory(db_path=api.server.db_path)
    done = await worker.client.wait_for_run(kept, timeout=10)
    assert done["status"] == "Completed" and done["output"] == {"ran": True}
    await asyncio.sleep(0.3)
    assert [call["ctx"]["run_id"] for call in step_server.calls["/later/s"]] == [kept]
    assert (await api.ok(f"/v1/runs/{cancelled_id}"))["data"]["status"] == "Cancelled"


async def test_cancelling_an_ended_run_leaves_it_as_it_was(api: Api, stepflow: RunningServer,
                                                           step_server: StepServer) -> None:
    await declare(stepflow, step_server, "quick", {"s": answer({"done": True})})
    _, run_id = await start(stepflow, "test/quick")
    done = await stepflow.client.wait_for_run(run_id, timeout=10)
    status, body = await api.call("DELETE", f"/v1/runs/{run_id}")
    assert status == 200 and body["data"]["status"] == "Completed"
    assert (await api.ok(f"/v1/runs/{run_id}"))["data"] == done


# --- listing -----------------------------------------------------------------------------------------------


async def test_list_runs_filters_and_pages_newest_first(api: Api, stepflow: RunningServer,
                                                        step_server: StepServer) -> None:
    await declare(stepflow, step_server, "alpha", {"s": answer({"ok": True})})
    await declare(stepflow, step_server, "beta", {"s": answer({"no": True}, 400)})
    created: list[str] = []
    for i in range(8):
        _, run_id = await start(stepflow, "test/alpha" if i % 3 else "test/beta", {"i": i})
        created.append(run_id)
    for run_id in created:
        await stepflow.client.wait_for_run(run_id, timeout=10)
    newest_first = list(reversed(created))
    betas = [r for i, r in enumerate(created) if i % 3 == 0][::-1]
    alphas = [r for r in newest_first if r not in betas]

    everything = await api.ok("/v1/runs")
    assert set(everything) == {"data", "cursor", "has_more"}
    assert [r["run_id"] for r in everything["data"]] == newest_first
    assert everything["cursor"] is None and everything["has_more"] is False
    for run in everything["data"]:
        assert_v1_run(run)

    # pages of 3: 3, 3, 2, following the cursor, with nothing missing or repeated
    seen: list[str] = []
    cursor = None
    pages = []
    while True:
        page = await api.ok("/v1/runs?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        pages.append((len(page["data"]), page["has_more"]))
        seen += [r["run_id"] for r in page["data"]]
        cursor = page["cursor"]
        if cursor is None:
            break
        assert cursor == page["data"][-1]["run_id"]
    assert pages == [(3, True), (3, True), (2, False)]
    assert seen == newest_first

    by_function = await api.ok("/v1/runs?function_id=alpha")
    assert [r["run_id"] for r in by_function["data"]] == alphas
    assert {r["function_id"] for r in by_function["data"]} == {"alpha"}
    failed = await api.ok("/v1/runs?status=Failed")
    assert [r["run_id"] for r in failed["data"]] == betas
    assert all(r["status"] == "Failed" and "error" in r for r in failed["data"])
    assert [r["run_id"] for r in (await api.ok("/v1/runs?status=completed"))["data"]] == alphas
    assert [r["run_id"] for r in (await api.ok("/v1/runs?status=COMPLETED&function_id=alpha"))["data"]] == alphas
    assert (await api.ok("/v1/runs?status=Failed&function_id=alpha"))["data"] == []
    assert (await api.ok("/v1/runs?function_id=nobody"))["data"] == []
    assert (await api.ok("/v1/runs?status=Running"))["data"] == []

    # filters and pages together
    first = await api.ok("/v1/runs?function_id=alpha&limit=2")
    second = await api.ok(f"/v1/runs?function_id=alpha&limit=2&cursor={first['cursor']}")
    third = await api.ok(f"/v1/runs?function_id=alpha&limit=2&cursor={second['cursor']}")
    assert [r["run_id"] for p in (first, second, third) for r in p["data"]] == alphas
    assert (first["has_more"], second["has_more"], third["has_more"]) == (True, True, False)
    # empty parameters are absent parameters, as in the `?status=&function_id=&cursor=&limit=` template
    blank = await api.ok("/v1/runs?status=&function_id=&cursor=&limit=")
    assert [r["run_id"] for r in blank["data"]] == newest_first
    # an exact fit: the last full page says there is no more
    exact = await api.ok(f"/v1/runs?limit={len(created)}")
    assert len(exact["data"]) == len(created) and exact["has_more"] is False and exact["cursor"] is None


@pytest.mark.parametrize(("query", "needles"), [
    ("status=Bogus", ("'Bogus'", "Completed")),
    ("limit=0", ("'limit'",)),
    ("limit=501", ("'limit'", "500")),
    ("limit=ten", ("'limit'",)),
    ("cursor=not-a-run", ("'cursor'",)),
])
async def test_list_runs_rejects_bad_parameters(api: Api, query: str, needles: tuple[str, ...]) -> None:
    status, body = await api.get(f"/v1/runs?{query}")
    assert_error(status, body, 400, "invalid_request", *needles)
    status, body = await api.get(f"/v2/runs?{query}")
    assert_error(status, body, 400, "invalid_request", *needles)


# --- v2: the InngestRun schema -----------------------------------------------------------------------------


async def test_v2_runs_validate_against_the_inngest_run_schema(api: Api, stepflow: RunningServer,
                                                               step_server: StepServer,
                                                               run_schema: jsonschema.protocols.Validator) -> None:
    await declare(stepflow, step_server, "obj", {"s": answer({"status": "success", "processedItems": 98})},
                  app_id="imports")
    await declare(stepflow, step_server, "text", {"s": answer("done")})
    await declare(stepflow, step_server, "list", {"s": answer([1, 2, 3])})
    await declare(stepflow, step_server, "number", {"s": answer(42)})
    await declare(stepflow, step_server, "nothing", {"s": answer(None)})
    await declare(stepflow, step_server, "looks-wrapped", {"s": answer({"value": 42})})
    await declare(stepflow, step_server, "fails", {"s": answer({"why": "bad input"}, 422)})
    await declare(stepflow, step_server, "slow", {"s": answer({}, delay=0.3), "t": answer({})})

    runs: dict[str, tuple[str, str]] = {}
    for fn in ("obj", "text", "list", "number", "nothing", "looks-wrapped", "fails", "slow"):
        runs[fn] = await start(stepflow, f"test/{fn}")
    await until(lambda: step_called(step_server, "/slow/s"))
    status, _ = await api.call("DELETE", f"/v1/runs/{runs['slow'][1]}")
    assert status == 200
    for _, run_id in runs.values():
        await stepflow.client.wait_for_run(run_id, timeout=10)

    seen: dict[str, dict[str, Any]] = {}
    for fn, (event_id, run_id) in runs.items():
        single = (await api.ok(f"/v2/runs/{run_id}"))["data"]
        run_schema.validate(single)
        [from_event] = (await api.ok(f"/v2/events/{event_id}/runs"))["data"]
        run_schema.validate(from_event)
        assert from_event == single
        assert single["run_id"] == run_id and single["event_id"] == event_id and single["function_id"] == fn
        assert parse_iso(single["started_at"]) <= parse_iso(single["ended_at"])
        seen[fn] = single

    assert seen["obj"]["status"] == "COMPLETED" and seen["obj"]["app_id"] == "imports"
    assert seen["obj"]["output"] == {"status": "success", "processedItems": 98}
    assert seen["text"]["app_id"] == "default"
    # outputs that are not objects are still given, wrapped so the schema's `object` holds
    assert seen["text"]["output"] == {"value": "done"}
    assert seen["list"]["output"] == {"value": [1, 2, 3]}
    assert seen["number"]["output"] == {"value": 42}
    # ...and an object whose only key is `value` is wrapped too: one key `value` always means "a wrapper"
    assert seen["looks-wrapped"]["output"] == {"value": {"value": 42}}
    assert seen["nothing"]["status"] == "COMPLETED" and "output" not in seen["nothing"]
    assert seen["fails"]["status"] == "FAILED" and "output" not in seen["fails"]
    assert seen["slow"]["status"] == "CANCELLED"
    # v1 keeps the output as it is
    assert (await api.ok(f"/v1/runs/{runs['text'][1]}"))["data"]["output"] == "done"

    listed = (await api.ok("/v2/runs?limit=100"))["data"]
    assert len(listed) == len(runs)
    for run in listed:
        run_schema.validate(run)
    assert {r["status"] for r in listed} == {"COMPLETED", "FAILED", "CANCELLED"}


async def test_the_schema_file_is_the_inngest_run_schema(run_schema: jsonschema.protocols.Validator) -> None:
    schema = run_schema.schema
    assert schema["title"] == "InngestRun" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"run_id", "function_id", "app_id", "status", "event_id", "output",
                                         "started_at", "ended_at"}
    # and the validator really checks: extra fields, lower-case statuses, bad dates and scalar outputs fail
    good = {"run_id": new_ulid(), "function_id": "f", "status": "COMPLETED", "started_at": "2024-04-25T14:46:45.337Z"}
    run_schema.validate(good)
    for bad in ({**good, "extra": 1}, {**good, "status": "Completed"}, {**good, "started_at": "yesterday"},
                {**good, "output": "done"}, {"run_id": "x", "status": "RUNNING"}):
        with pytest.raises(jsonschema.ValidationError):
            run_schema.validate(bad)


# --- auth --------------------------------------------------------------------------------------------------


@pytest.fixture
async def keyed(stepflow_factory: ServerFactory, http: aiohttp.ClientSession) -> Api:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["s3cret", "old-key"], event_keys=["k"],
                                                            dev=False))
    return Api(http, server)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Bearer wrong", "Bearer s3cre",
                                           "Bearer s3cret2", "Basic s3cret", "s3cret", "Token s3cret"])
async def test_rest_calls_need_the_signing_key(keyed: Api, step_server: StepServer,
                                               authorization: str | None) -> None:
    await declare(keyed.server, step_server, "wf", {"s": answer({"ok": True})})
    event_id, run_id = await start(keyed.server, "test/wf")
    headers = {} if authorization is None else {"Authorization": authorization}
    calls = [("GET", "/v1/runs"), ("GET", f"/v1/runs/{run_id}"), ("GET", f"/v1/runs/{run_id}/steps"),
             ("GET", f"/v1/events/{event_id}"), ("GET", f"/v1/events/{event_id}/runs"),
             ("DELETE", f"/v1/runs/{run_id}"), ("GET", "/v2/runs"), ("GET", f"/v2/runs/{run_id}"),
             ("GET", f"/v2/events/{event_id}/runs"), ("GET", "/v1/runs/not-a-ulid"), ("GET", "/v1/no-such-route")]
    for method, path in calls:
        status, body = await keyed.call(method, path, headers=headers, auth=False)
        assert_error(status, body, 401, "unauthorized")
        assert "signing key" in body["error"]["message"]
    # the refused DELETE did nothing
    assert (await keyed.server.client.wait_for_run(run_id, timeout=10))["status"] == "Completed"


async def test_the_right_signing_key_opens_every_call(keyed: Api, step_server: StepServer) -> None:
    await declare(keyed.server, step_server, "wf", {"s": answer({"ok": True})})
    event_id, run_id = await start(keyed.server, "test/wf")
    await keyed.server.client.wait_for_run(run_id, timeout=10)
    for authorization in ("Bearer s3cret", "bearer s3cret", "Bearer old-key"):  # scheme is case-insensitive;
        headers = {"Authorization": authorization}                             # a fallback key works too
        for path in ("/v1/runs", f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/steps", f"/v1/events/{event_id}",
                     f"/v1/events/{event_id}/runs", "/v2/runs", f"/v2/runs/{run_id}",
                     f"/v2/events/{event_id}/runs"):
            status, body = await keyed.call("GET", path, headers=headers, auth=False)
            assert status == 200, (path, body)
    status, body = await keyed.call("DELETE", f"/v1/runs/{run_id}", headers={"Authorization": "Bearer s3cret"},
                                    auth=False)
    assert status == 200 and body["data"]["status"] == "Completed"


async def test_a_dev_server_with_a_signing_key_requires_it(stepflow_factory: ServerFactory,
                                                           http: aiohttp.ClientSession) -> None:
    api = Api(http, await stepflow_factory(settings=ServerSettings(signing_keys=["devkey"], dev=True)))
    status, body = await api.get("/v1/runs", auth=False)
    assert_error(status, body, 401, "unauthorized")
    status, _ = await api.get("/v1/runs")
    assert status == 200
    # events stay keyless in dev when no event key is set
    assert len(await api.server.client.send({"name": "test/x"})) == 1


# --- errors: unknown, malformed, no route ------------------------------------------------------------------


async def test_unknown_ids_are_404(api: Api) -> None:
    run_id = new_ulid()
    for method, path in [("GET", f"/v1/runs/{run_id}"), ("GET", f"/v1/runs/{run_id}/steps"),
                         ("DELETE", f"/v1/runs/{run_id}"), ("GET", f"/v2/runs/{run_id}"),
                         ("GET", f"/v1/runs/{run_id}?wait=1s")]:
        status, body = await api.call(method, path)
        assert_error(status, body, 404, "not_found", run_id)
    for path in ("/v1/events/{}", "/v1/events/{}/runs", "/v2/events/{}/runs"):
        for event_id in (new_ulid(), "order-77"):
            status, body = await api.get(path.format(event_id))
            assert_error(status, body, 404, "not_found", event_id)


@pytest.mark.parametrize("bad", ["not-a-ulid", "01HW3C5Z7YJ8KQ2V9M4N6P8R0", "01HW3C5Z7YJ8KQ2V9M4N6P8R0TX",
                                 "01HW3C5Z7YJ8KQ2V9M4N6P8RUU", "01HW3C5Z7YJ8KQ2V9M4N6P8R0%21"])
async def test_malformed_run_ids_are_400(api: Api, bad: str) -> None:
    for method, path in [("GET", f"/v1/runs/{bad}"), ("GET", f"/v1/runs/{bad}/steps"),
                         ("DELETE", f"/v1/runs/{bad}"), ("GET", f"/v2/runs/{bad}"), ("GET", f"/v1/runs/{bad}?wait=1s")]:
        status, body = await api.call(method, path)
        assert_error(status, body, 400, "invalid_request", "run id", "ULID")


@pytest.mark.parametrize("bad", ["has%20space", "x" * 129, "semi%3Bcolon"])
async def test_malformed_event_ids_are_400(api: Api, bad: str) -> None:
    for path in (f"/v1/events/{bad}", f"/v1/events/{bad}/runs", f"/v2/events/{bad}/runs"):
        status, body = await api.get(path)
        assert_error(status, body, 400, "invalid_request", "event id")


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/v1/nothing-here", 404), ("GET", "/nothing", 404), ("GET", "/v3/runs", 404),
    ("GET", f"/v1/runs/{new_ulid()}/steps/extra", 404), ("GET", "/v1", 404),
    ("POST", "/v1/runs", 405), ("PUT", f"/v1/runs/{new_ulid()}", 405), ("DELETE", "/v1/runs", 405),
])
async def test_unknown_routes_get_a_json_error(api: Api, method: str, path: str, expected: int) -> None:
    status, body = await api.call(method, path)
    assert_error(status, body, expected, None, method if expected == 405 else path)


# --- waiting without polling -------------------------------------------------------------------------------


async def test_wait_returns_as_soon_as_the_run_ends(api: Api, stepflow: RunningServer,
                                                    step_server: StepServer) -> None:
    await declare(stepflow, step_server, "short", {"s": answer({"finished": True}, delay=0.3)})
    _, run_id = await start(stepflow, "test/short")
    began = time.monotonic()
    run = (await api.ok(f"/v1/runs/{run_id}?wait=5s"))["data"]
    elapsed = time.monotonic() - began
    assert run["status"] == "Completed" and run["output"] == {"finished": True}
    assert elapsed < 3.0, f"?wait=5s took {elapsed:.2f}s for a run that ended after ~0.3s"
    # v2 waits the same way; an ended run answers at once
    assert (await api.ok(f"/v2/runs/{run_id}?wait=5s"))["data"]["status"] == "COMPLETED"


async def test_wait_returns_the_current_status_when_the_run_does_not_end(api: Api, stepflow: RunningServer,
                                                                         step_server: StepServer) -> None:
    release = asyncio.Event()
    await declare(stepflow, step_server, "held", {"s": held_until(release, {"late": True})})
    _, run_id = await start(stepflow, "test/held")
    try:
        await until(lambda: step_called(step_server, "/held/s"))
        for wait, seconds in (("1", 1.0), ("400ms", 0.4)):  # a bare number is seconds
            began = time.monotonic()
            run = (await api.ok(f"/v1/runs/{run_id}?wait={wait}"))["data"]
            elapsed = time.monotonic() - began
            assert run["status"] == "Running" and run["ended_at"] is None
            assert elapsed >= seconds * 0.9, f"?wait={wait} answered after {elapsed:.2f}s, before the run ended"
    finally:
        release.set()
    assert (await api.ok(f"/v1/runs/{run_id}?wait=5s"))["data"]["output"] == {"late": True}


async def test_wait_wakes_up_on_cancel(api: Api, stepflow: RunningServer, step_server: StepServer) -> None:
    release = asyncio.Event()
    await declare(stepflow, step_server, "held", {"s": held_until(release)})
    _, run_id = await start(stepflow, "test/held")
    try:
        waiter = asyncio.create_task(api.get(f"/v1/runs/{run_id}?wait=20s"))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        began = time.monotonic()
        status, _ = await api.call("DELETE", f"/v1/runs/{run_id}")
        assert status == 200
        status, body = await asyncio.wait_for(waiter, 10)
        assert status == 200 and body["data"]["status"] == "Cancelled"
        assert time.monotonic() - began < 5
    finally:
        release.set()


@pytest.mark.parametrize(("wait", "needles"), [("soon", ("'wait'",)), ("10m", ("'wait'", "300")),
                                               ("-1s", ("'wait'",)), ("5x", ("'wait'",))])
async def test_bad_wait_values_are_400(api: Api, stepflow: RunningServer, step_server: StepServer, wait: str,
                                       needles: tuple[str, ...]) -> None:
    await declare(stepflow, step_server, "quick", {"s": answer({})})
    _, run_id = await start(stepflow, "test/quick")
    status, body = await api.get(f"/v1/runs/{run_id}?wait={wait}")
    assert_error(status, body, 400, "invalid_request", *needles)


async def test_bodies_over_the_server_limit_are_a_json_413_on_every_path(tmp_path: Path,
                                                                        http: aiohttp.ClientSession) -> None:
    settings = ServerSettings(dev=True, max_request_bytes=64 * 1024)
    engine = EngineCore(SqliteStore(tmp_path / "limits.db"), EngineConfig())
    await engine.start()
    app = create_app(engine, settings)

    async def reads_directly(request: web.Request) -> web.Response:
        # a handler that reads its body itself, without the server's read_body helper
        return web.json_response({"size": len(await request.read())})

    app.router.add_post("/raw-body", reads_directly)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found while reading
        yield b'[{"name": "test/big", "data": {"blob": "'
        for _ in range(20):
            yield b"z" * 8192
        yield b'"}}]'

    try:
        for path in ("/e/dev", "/raw-body"):
            async with http.post(url + path, data=chunked()) as resp:
                assert resp.content_type == "application/json"
                body = codec.loads(await resp.read())
            if path == "/e/dev":  # the event API answers in the shape the official SDKs parse
                assert resp.status == 413 and body["code"] == "payload_too_large", body
                assert str(64 * 1024) in body["error"] and body["status"] == 413
            else:
                assert_error(resp.status, body, 413, "payload_too_large", str(64 * 1024))
        async with http.post(url + "/raw-body", data=b"small") as resp:
            assert resp.status == 200 and await resp.json() == {"size": 5}
        async with http.get(url + "/v1/runs") as resp:
            assert (await resp.json())["data"] == []
    finally:
        await runner.cleanup()
        await engine.stop(grace=1.0)


async def test_health_is_open(stepflow_factory: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["s"], event_keys=["k"], dev=False))
    async with http.get(server.url + "/health") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
