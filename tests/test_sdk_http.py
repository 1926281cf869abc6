"""The SDK protocol over HTTP (issue 3, item 4): an App served by a real aiohttp server (and by a real ASGI
server) on 127.0.0.1, registered with a real stepflow server, driven by it. Signature checks outside dev
mode, the 200/206/4xx/5xx answers and their ops, hashed step ids."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningServer, ServerFactory, free_port
from test_sdk_support import Calls, first_run

import stepflow as sf
from stepflow import Context, EngineConfig, NonRetriableError, RetryAfterError, StepError, codec
from stepflow.protocol import signing
from stepflow.sdk.serve import ServeOptions
from stepflow.sdk.serve_aiohttp import add_routes
from stepflow.sdk.serve_asgi import asgi_app
from stepflow.server import ServerSettings
from stepflow.server.routes_apps import SYNC_LOG_KEY, sync_app

PATH = "/api/stepflow"
Serve = Callable[..., Awaitable[str]]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`await serve(app, options)` → the endpoint's URL, on a real aiohttp server; stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(app: sf.App, options: ServeOptions | None = None) -> str:
        web_app = web.Application()
        add_routes(web_app, app, path=PATH, options=options or ServeOptions(dev=True))
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}{PATH}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def post(url: str, document: dict[str, Any], headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.post(
            url, data=raw if raw is not None else codec.dumps(document),
            headers={"Content-Type": "application/json", **(headers or {})}) as resp:
        text = await resp.read()
        return resp.status, codec.loads(text) if text else None, dict(resp.headers)


def call_input(event: dict[str, Any] | None = None, steps: dict[str, Any] | None = None,
               **ctx: Any) -> dict[str, Any]:
    event = event or {"name": "t/go", "data": {}}
    return {"event": event, "events": [event], "steps": steps or {},
            "ctx": {"run_id": "01TESTRUN", "attempt": 0, **ctx}}


# --- the seed flow over HTTP ----------------------------------------------------------------------------


def csv_app(calls: Calls) -> sf.App:
    app = sf.App("imports")

    def download(n: int) -> list[str]:
        calls.hit("download")
        return ["id,email"] + [f"{i},{'bad' if i in (17, 58) else f'u{i}@example.com'}" for i in range(1, n + 1)]

    async def parse_rows(rows: list[str]) -> tuple[list[int], list[int]]:
        calls.hit("parse")
        good: list[int] = []
        bad: list[int] = []
        for row in rows[1:]:
            ident, email = row.split(",")
            (good if "@" in email else bad).append(int(ident))
        return good, bad

    @app.function(id="process-csv-upload", trigger=sf.event("imports/csv.uploaded"))
    async def process_csv(ctx: Context) -> dict[str, Any]:
        calls.hit("body")
        rows = await ctx.step.run("download", download, ctx.event.data["rows"])
        results, failures = await ctx.step.run("parse", parse_rows, rows)
        await ctx.step.sleep("cool-down", "200ms")
        return {"status": "success", "processedItems": len(results), "failedItems": len(failures)}

    return app


async def test_seed_flow_served_over_http_and_driven_by_the_server(stepflow: RunningServer, serve: Serve) -> None:
    calls = Calls()
    url = await serve(csv_app(calls), ServeOptions(dev=True, base_url=stepflow.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:   # the sync: PUT → POST /fn/register
        assert resp.status == 200, await resp.text()
        registered = await resp.json()
    assert registered["app_id"] == "imports"
    assert [f["id"] for f in registered["functions"]] == ["process-csv-upload"]
    functions = await stepflow.client._request("GET", "/v1/functions")
    assert [(f["id"], f["app_id"]) for f in functions["data"]] == [("process-csv-upload", "imports")]

    ids = await stepflow.client.send({"name": "imports/csv.uploaded", "data": {"rows": 100}})
    output = await stepflow.client.wait_for_output(ids[0], timeout=15)
    assert output == {"status": "success", "processedItems": 98, "failedItems": 2}
    runs = await stepflow.client.get_event_runs(ids[0])
    assert [r["status"] for r in runs] == ["Completed"]
    steps = await stepflow.client.get_run_steps(runs[0]["run_id"])
    assert [(s["step_id"], s["status"], s["kind"], s["hashed_id"]) for s in steps] == [
        ("download", "completed", "run", sha1("download")), ("parse", "completed", "run", sha1("parse")),
        ("cool-down", "completed", "sleep", sha1("cool-down"))]
    assert steps[1]["output"] == [[i for i in range(1, 101) if i not in (17, 58)], [17, 58]]
    assert calls["download"] == 1 and calls["parse"] == 1
    # both steps ran inline in the first call; the sleep needed a second one
    assert calls["body"] == 2


async def test_dev_server_syncs_the_app_with_stepflow_dev_u(stepflow: RunningServer, serve: Serve) -> None:
    """`stepflow dev -u URL` PUTs the endpoint with X-Stepflow-Server; in dev mode the app registers there."""
    calls = Calls()
    url = await serve(csv_app(calls), ServeOptions(dev=True))   # no base_url: the header decides
    assert stepflow.app is not None
    reports: list[str] = []
    assert await sync_app(url, stepflow.url, stepflow.app[SYNC_LOG_KEY], reports.append, attempts=3,
                          first_delay=0.1)
    assert reports == ["synced app 'imports' at " + url + ": registered 1 function(s): process-csv-upload"]
    ids = await stepflow.client.send({"name": "imports/csv.uploaded", "data": {"rows": 10}})
    assert await stepflow.client.wait_for_output(ids[0], timeout=15) == {
        "status": "success", "processedItems": 10, "failedItems": 0}


async def test_dev_u_reports_the_error_an_app_answered_and_backs_off(stepflow: RunningServer) -> None:
    """An app that answers its PUT with the server's refusal (as the official Python SDK does, with 200) or an
    error status is reported with that error — once, not every second — and retried with a growing delay."""
    import time

    puts: list[float] = []

    async def refused(request: web.Request) -> web.Response:
        puts.append(time.monotonic())
        return web.json_response({"error": "app py-app, function 'x': sets 'concurrency'"}, status=200)

    app = web.Application()
    app.router.add_put("/api/inngest", refused)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/api/inngest"
    try:
        assert stepflow.app is not None
        reports: list[str] = []
        assert not await sync_app(url, stepflow.url, stepflow.app[SYNC_LOG_KEY], reports.append, attempts=3,
                                  first_delay=0.1)
        assert reports == [f"sync of the app at {url} failed: app py-app, function 'x': sets 'concurrency'; "
                           "retrying in 0.1s, then less often"]
        assert len(puts) == 3 and puts[2] - puts[1] >= 1.8 * (puts[1] - puts[0]) > 0  # the delay doubles
    finally:
        await runner.cleanup()
    reports.clear()
    assert not await sync_app("http://127.0.0.1:9/api/inngest", stepflow.url, stepflow.app[SYNC_LOG_KEY],
                              reports.append, attempts=2, first_delay=0.05)
    assert len(reports) == 1 and reports[0].startswith("app at http://127.0.0.1:9/api/inngest is not reachable")


async def test_sync_outside_dev_mode_ignores_the_server_header(stepflow: RunningServer, serve: Serve) -> None:
    """Outside dev mode a PUT cannot redirect the app (and its signing key) to another server."""
    url = await serve(csv_app(Calls()), ServeOptions(dev=False, signing_key="k"))
    async with aiohttp.ClientSession() as http, http.put(url, headers={"X-Stepflow-Server": stepflow.url}) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"]["code"] == "no_server"
    assert (await stepflow.client._request("GET", "/v1/functions"))["data"] == []


async def test_parallel_steps_over_http_each_run_once(stepflow: RunningServer, serve: Serve) -> None:
    app = sf.App("par")
    calls = Calls()

    async def work(name: str) -> str:
        calls.hit(name)
        return name * 2

    @app.function(id="fan", trigger=sf.event("t/fan"))
    async def fan(ctx: Context) -> list[str]:
        return list(await asyncio.gather(*(ctx.step.run(f"w-{n}", work, n) for n in "abcd")))

    url = await serve(app, ServeOptions(dev=True, base_url=stepflow.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:
        assert resp.status == 200
    ids = await stepflow.client.send({"name": "t/fan"})
    assert await stepflow.client.wait_for_output(ids[0], timeout=15) == ["aa", "bb", "cc", "dd"]
    assert dict(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}


async def test_uncaught_error_is_visible_over_rest(stepflow: RunningServer, serve: Serve) -> None:
    app = sf.App("errs")

    def validate(order: int) -> None:
        raise NonRetriableError(f"order {order} has no lines")

    @app.function(id="checkout", trigger=sf.event("t/checkout"))
    async def checkout(ctx: Context) -> str:
        await ctx.step.run("validate", validate, ctx.event.data["order"])
        return "ok"

    url = await serve(app, ServeOptions(dev=True, base_url=stepflow.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:
        assert resp.status == 200
    ids = await stepflow.client.send({"name": "t/checkout", "data": {"order": 5}})
    run = await first_run(stepflow.client, ids[0], timeout=15)
    assert run["status"] == "Failed"
    # the same over plain REST, as any HTTP client sees it
    async with aiohttp.ClientSession() as http, http.get(f"{stepflow.url}/v1/runs/{run['run_id']}") as resp:
        assert resp.status == 200
        rest = (await resp.json())["data"]
    error = rest["error"]
    assert rest["status"] == "Failed"
    assert error["name"] == "StepError"
    assert "order 5 has no lines" in error["message"]
    assert error["cause"] == {"name": "NonRetriableError", "message": "order 5 has no lines"}
    assert "in validate" in error["stack"] and "NonRetriableError: order 5 has no lines" in error["stack"]
    steps = await stepflow.client.get_run_steps(run["run_id"])
    assert [(s["step_id"], s["status"], s["attempts"]) for s in steps] == [("validate", "failed", 1)]


# --- signatures -----------------------------------------------------------------------------------------


def counting_app(calls: Calls) -> sf.App:
    app = sf.App("signed")

    @app.function(id="plain", trigger=sf.event("t/plain"))
    async def plain(ctx: Context) -> dict[str, Any]:
        calls.hit("plain")
        return {"echo": ctx.event.data}

    @app.function(id="stepped", trigger=sf.event("t/stepped"))
    async def stepped(ctx: Context) -> str:
        calls.hit("stepped")
        await ctx.step.run("one", lambda: 1)
        await ctx.step.sleep("wait", "1h")
        return "never in one call"

    return app


@pytest.mark.parametrize("header", [
    None,
    "t=123&s=deadbeef",
    "garbage",
    "stale",
    "wrong-key",
    "other-body",
    "t=\u00b2&s=deadbeef",        # a non-ASCII digit as the time
    "t=1700000000&s=\u00e9\u00e9",  # a non-ASCII signature
])
async def test_endpoint_outside_dev_mode_refuses_unsigned_bad_or_stale_calls(serve: Serve,
                                                                            header: str | None) -> None:
    calls = Calls()
    url = await serve(counting_app(calls), ServeOptions(signing_key="signkey-prod-abc123", dev=False))
    body = codec.dumps(call_input({"name": "t/plain", "data": {"x": 1}}))
    headers: dict[str, str] = {}
    if header == "stale":
        headers["X-Inngest-Signature"] = signing.sign(body, "signkey-prod-abc123", at=time.time() - 3600)
    elif header == "wrong-key":
        headers["X-Inngest-Signature"] = signing.sign(body, "signkey-prod-other")
    elif header == "other-body":
        headers["X-Inngest-Signature"] = signing.sign(b'{"event": {}}', "signkey-prod-abc123")
    elif header is not None:
        headers["X-Inngest-Signature"] = header
    status, answer, _ = await post(f"{url}?fnId=plain", {}, headers, raw=body)
    assert status == 401
    assert answer["error"]["code"] == "unauthorized"
    assert calls["plain"] == 0   # nothing ran


@pytest.mark.parametrize(("document", "needle"), [
    ({"event": [], "steps": {}, "ctx": {}}, "'event' must be an object"),
    ({"event": {"name": "t/go"}, "steps": [], "ctx": {}}, "'steps' must be an object"),
    ({"event": {"name": "t/go"}, "steps": {}, "ctx": "x"}, "'ctx' must be an object"),
    ({"event": {"name": "t/go"}, "steps": {}, "ctx": {"attempt": "x"}}, "'ctx.attempt' has the wrong type"),
    ({"event": {"name": "t/go"}, "steps": {}, "ctx": {"stack": {"stack": [1]}}}, "'ctx.stack' must list step ids"),
    ({"event": {"name": "t/go"}, "events": [1], "steps": {}, "ctx": {}}, "'events' must be a list of objects"),
], ids=["event", "steps", "ctx", "attempt", "stack", "events"])
async def test_a_signed_call_with_wrong_input_types_is_a_400(serve: Serve, document: dict[str, Any],
                                                             needle: str) -> None:
    calls = Calls()
    key = "signkey-prod-abc123"
    url = await serve(counting_app(calls), ServeOptions(signing_key=key, dev=False))
    body = codec.dumps(document)
    status, answer, headers = await post(f"{url}?fnId=plain", {}, {"X-Inngest-Signature": signing.sign(body, key)},
                                         raw=body)
    assert status == 400 and headers.get("X-Inngest-No-Retry") == "true", answer
    assert answer["name"] == "InvalidInput" and needle in answer["message"]
    assert calls["plain"] == 0


async def test_endpoint_outside_dev_mode_runs_correctly_signed_calls(serve: Serve) -> None:
    calls = Calls()
    key = "signkey-prod-abc123"
    url = await serve(counting_app(calls), ServeOptions(signing_key=key, dev=False))
    body = codec.dumps(call_input({"name": "t/plain", "data": {"x": 1}}))
    status, answer, _ = await post(f"{url}?fnId=plain", {}, {"X-Inngest-Signature": signing.sign(body, key)}, raw=body)
    assert (status, answer) == (200, {"echo": {"x": 1}})
    body = codec.dumps(call_input({"name": "t/stepped"}))
    status, answer, _ = await post(f"{url}?fnId=stepped", {}, {"X-Inngest-Signature": signing.sign(body, key)},
                                   raw=body)
    assert status == 206
    assert [op["op"] for op in answer] == ["StepRun", "Sleep"]
    assert dict(calls) == {"plain": 1, "stepped": 1}


async def test_fallback_signing_key_is_accepted_during_rotation(serve: Serve) -> None:
    calls = Calls()
    url = await serve(counting_app(calls), ServeOptions(signing_key="new-key", signing_key_fallback="old-key",
                                                        dev=False))
    body = codec.dumps(call_input({"name": "t/plain", "data": {}}))
    status, _, _ = await post(f"{url}?fnId=plain", {}, {"X-Inngest-Signature": signing.sign(body, "old-key")},
                              raw=body)
    assert status == 200 and calls["plain"] == 1


async def test_endpoint_outside_dev_mode_without_a_key_refuses_everything(serve: Serve) -> None:
    calls = Calls()
    url = await serve(counting_app(calls), ServeOptions(dev=False))
    body = codec.dumps(call_input({"name": "t/plain", "data": {}}))
    status, answer, _ = await post(f"{url}?fnId=plain", {}, {"X-Inngest-Signature": signing.sign(body, "any")},
                                   raw=body)
    assert status == 500 and answer["error"]["code"] == "no_signing_key"
    assert calls["plain"] == 0


async def test_signed_server_drives_a_signed_endpoint_end_to_end(stepflow_factory: ServerFactory,
                                                                 serve: Serve) -> None:
    server = await stepflow_factory(
        settings=ServerSettings(signing_keys=["k"], event_keys=["e"], dev=False),
        config=EngineConfig(signing_key="k", backoff_base=0.01, backoff_max=0.1, poll_interval=0.2))
    calls = Calls()
    url = await serve(csv_app(calls), ServeOptions(signing_key="k", dev=False, base_url=server.url))
    async with aiohttp.ClientSession() as http:
        async with http.put(url) as resp:   # registers with "Authorization: Bearer k"
            assert resp.status == 200, await resp.text()
        # the endpoint refuses an unsigned call even from the right network
        status, _, _ = await post(f"{url}?fnId=process-csv-upload", call_input())
        assert status == 401
    assert calls["body"] == 0
    ids = await server.client.send({"name": "imports/csv.uploaded", "data": {"rows": 60}})
    assert await server.client.wait_for_output(ids[0], timeout=15) == {
        "status": "success", "processedItems": 58, "failedItems": 2}
    assert calls["download"] == 1 and calls["parse"] == 1


async def test_server_with_a_different_key_cannot_drive_the_endpoint(stepflow_factory: ServerFactory,
                                                                     serve: Serve) -> None:
    server = await stepflow_factory(
        settings=ServerSettings(signing_keys=["k"], event_keys=["e"], dev=False),
        config=EngineConfig(signing_key="not-the-apps-key", backoff_base=0.01, backoff_max=0.1))
    calls = Calls()
    url = await serve(csv_app(calls), ServeOptions(signing_key="k", dev=False, base_url=server.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:
        assert resp.status == 200
    ids = await server.client.send({"name": "imports/csv.uploaded", "data": {"rows": 20}})
    run = await first_run(server.client, ids[0], timeout=15)
    assert run["status"] == "Failed"
    assert run["error"]["status"] == 401
    assert calls["body"] == 0


async def test_sync_to_a_keyed_server_needs_the_key(stepflow_factory: ServerFactory, serve: Serve) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["k"], event_keys=["e"], dev=False))
    url = await serve(csv_app(Calls()), ServeOptions(signing_key="wrong", dev=False, base_url=server.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:
        assert resp.status == 502   # the server refused the registration; the endpoint says so
    assert (await server.client._request("GET", "/v1/functions"))["data"] == []


# --- the protocol, call by call -------------------------------------------------------------------------


def protocol_app() -> sf.App:
    app = sf.App("proto", inline_budget=10.0)

    @app.function(id="repeat", trigger=sf.event("t/repeat"))
    async def repeat(ctx: Context) -> list[int]:
        return [await ctx.step.run("a", lambda: 1), await ctx.step.run("a", lambda: 2),
                await ctx.step.run("a", lambda: 3)]

    @app.function(id="gather", trigger=sf.event("t/gather"))
    async def gather(ctx: Context) -> list[str]:
        return list(await asyncio.gather(ctx.step.run("x", lambda: "x"), ctx.step.run("y", lambda: "y")))

    @app.function(id="tools", trigger=sf.event("t/tools"))
    async def tools(ctx: Context) -> None:
        kind = ctx.event.data["kind"]
        if kind == "sleep":
            await ctx.step.sleep("nap", "90s")
        elif kind == "wait":
            await ctx.step.wait_for_event("approval", event="t/ok", match="data.id", timeout="2m")
        elif kind == "invoke":
            await ctx.step.invoke("child", function="other", data={"n": 1}, timeout="1m")
        elif kind == "send":
            await ctx.step.send_event("emit", {"name": "t/out", "data": {"n": 2}})
        elif kind == "http":
            await ctx.step.http("remote", url="http://127.0.0.1:9/x", data={"n": 3})
        elif kind == "fatal":
            raise NonRetriableError("no way")
        elif kind == "later":
            raise RetryAfterError("busy", "3s")
        elif kind == "crash":
            raise KeyError("missing")
        elif kind == "step-fatal":
            await ctx.step.run("s", _fatal)

    return app


def _fatal() -> None:
    raise NonRetriableError("step says no")


async def test_hashed_step_ids_and_inline_step_runs(serve: Serve) -> None:
    url = await serve(protocol_app())
    status, ops, _ = await post(f"{url}?fnId=repeat", call_input())
    assert status == 206
    assert ops == [
        {"op": "StepRun", "id": sha1("a"), "displayName": "a", "name": "a", "data": 1},
        {"op": "StepRun", "id": sha1("a:1"), "displayName": "a:1", "name": "a:1", "data": 2},
        {"op": "StepRun", "id": sha1("a:2"), "displayName": "a:2", "name": "a:2", "data": 3},
        {"op": "RunComplete", "data": [1, 2, 3]},
    ]
    # with the first two memoized, a replay reports only the third
    memo = {sha1("a"): {"data": 10}, sha1("a:1"): {"data": 20}}
    status, ops, _ = await post(f"{url}?fnId=repeat", call_input(steps=memo, stack={"stack": list(memo)}))
    assert status == 206
    assert [op["op"] for op in ops] == ["StepRun", "RunComplete"]
    assert ops[0]["id"] == sha1("a:2") and ops[1]["data"] == [10, 20, 3]
    # all memoized: 200 with the output, nothing runs
    memo[sha1("a:2")] = {"data": 30}
    status, output, _ = await post(f"{url}?fnId=repeat", call_input(steps=memo))
    assert (status, output) == (200, [10, 20, 30])


async def test_gathered_steps_are_planned_then_run_one_per_call(serve: Serve) -> None:
    url = await serve(protocol_app())
    status, ops, _ = await post(f"{url}?fnId=gather", call_input())
    assert status == 206
    assert sorted((op["op"], op["id"], op["displayName"]) for op in ops) == sorted(
        [("StepPlanned", sha1("x"), "x"), ("StepPlanned", sha1("y"), "y")])
    # a call targeting one planned step runs only that one
    status, ops, _ = await post(f"{url}?fnId=gather", call_input(step_id=sha1("y")))
    assert status == 206
    assert ops == [{"op": "StepRun", "id": sha1("y"), "displayName": "y", "name": "y", "data": "y"}]
    # the target may also come as ?stepId=
    status, ops, _ = await post(f"{url}?fnId=gather&stepId={sha1('x')}", call_input())
    assert [(op["op"], op["data"]) for op in ops] == [("StepRun", "x")]
    status, output, _ = await post(f"{url}?fnId=gather", call_input(
        steps={sha1("x"): {"data": "X"}, sha1("y"): {"data": "Y"}}))
    assert (status, output) == (200, ["X", "Y"])


@pytest.mark.parametrize(("kind", "expected"), [
    ("sleep", {"op": "Sleep", "displayName": "nap", "opts": {"duration": "90000ms"}}),
    ("wait", {"op": "WaitForEvent", "displayName": "approval", "name": "t/ok",
              "opts": {"event": "t/ok", "timeout": "120000ms", "match": "data.id"}}),
    ("invoke", {"op": "InvokeFunction", "displayName": "child",
                "opts": {"function_id": "other", "payload": {"data": {"n": 1}, "user": None}, "timeout": "60000ms"}}),
    ("send", {"op": "SendEvent", "displayName": "emit", "opts": {"events": [{"name": "t/out", "data": {"n": 2}}]}}),
    ("http", {"op": "RunStep", "displayName": "remote",
              "opts": {"runtime": {"type": "http", "url": "http://127.0.0.1:9/x"}, "data": {"n": 3}}}),
])
async def test_each_tool_reports_its_op(serve: Serve, kind: str, expected: dict[str, Any]) -> None:
    url = await serve(protocol_app())
    status, ops, _ = await post(f"{url}?fnId=tools", call_input({"name": "t/tools", "data": {"kind": kind}}))
    assert status == 206 and len(ops) == 1
    op = ops[0]
    step_id = expected["displayName"]
    assert op["id"] == sha1(step_id)
    for key, value in expected.items():
        if key == "opts" and kind == "sleep":
            assert op["opts"]["duration"] == value["duration"] and "until" in op["opts"]
        else:
            assert op[key] == value, key


async def test_error_answers(serve: Serve) -> None:
    url = await serve(protocol_app())

    async def call(kind: str) -> tuple[int, Any, dict[str, str]]:
        return await post(f"{url}?fnId=tools", call_input({"name": "t/tools", "data": {"kind": kind}}))

    status, body, headers = await call("fatal")
    assert status == 400 and headers.get("X-Inngest-No-Retry") == "true"
    assert body["name"] == "NonRetriableError" and body["message"] == "no way" and "Traceback" in body["stack"]
    status, body, headers = await call("later")
    assert status == 500 and headers.get("Retry-After") == "3" and body["name"] == "RetryAfterError"
    status, body, headers = await call("crash")
    assert status == 500 and "X-Inngest-No-Retry" not in headers and body["name"] == "KeyError"
    # a step raising NonRetriableError: reported as StepError, marked not retriable
    status, ops, _ = await call("step-fatal")
    assert status == 206
    assert ops[0]["op"] == "StepError" and ops[0]["id"] == sha1("s") and ops[0]["opts"] == {"retriable": False}
    assert ops[0]["error"]["name"] == "NonRetriableError" and ops[0]["error"]["message"] == "step says no"
    # and a replay with that failure memoized raises StepError in the function, uncaught: 400, no retry
    status, body, headers = await post(f"{url}?fnId=tools", call_input(
        {"name": "t/tools", "data": {"kind": "step-fatal"}}, steps={sha1("s"): {"error": ops[0]["error"]}}))
    assert status == 400 and headers.get("X-Inngest-No-Retry") == "true"
    assert body["name"] == "StepError" and body["step_id"] == "s"
    assert body["cause"] == {"name": "NonRetriableError", "message": "step says no"}


async def test_bad_requests(serve: Serve) -> None:
    url = await serve(protocol_app())
    status, body, headers = await post(f"{url}?fnId=nope", call_input())
    assert status == 404 and body["name"] == "FunctionNotFound" and headers.get("X-Inngest-No-Retry") == "true"
    status, body, _ = await post(url, call_input())
    assert status == 400 and "fnId" in body["error"]["message"]
    status, body, _ = await post(f"{url}?fnId=repeat", {}, raw=b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_request"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        info = await resp.json()
    assert info == {"app_id": "proto", "mode": "dev", "functions": ["gather", "repeat", "tools"],
                    "signing_key": "missing"}


async def test_code_change_over_http_fails_the_run_naming_both_steps(serve: Serve) -> None:
    """A replay that meets a different step where a memoized one was answers 400 (no retry)."""
    url = await serve(protocol_app())
    memo = {sha1("b"): {"data": 1}}
    status, body, headers = await post(f"{url}?fnId=repeat", call_input(
        steps=memo, stack={"stack": [sha1("b")]}, step_names={sha1("b"): "b"}))
    assert status == 400 and headers.get("X-Inngest-No-Retry") == "true"
    assert body["name"] == "NonDeterminismError"
    assert "'a'" in body["message"] and "'b'" in body["message"]


# --- the ASGI adapter -----------------------------------------------------------------------------------


async def test_asgi_app_served_by_uvicorn_end_to_end(stepflow: RunningServer, tmp_path: Path) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    calls = Calls()

    async def root(scope: Any, receive: Any, send: Any) -> None:  # mount at /api/stepflow, like a framework
        if scope["type"] == "http" and scope["path"].startswith(PATH):
            scope = {**scope, "root_path": scope.get("root_path", "") + PATH, "path": scope["path"][len(PATH):]}
        await inner(scope, receive, send)

    inner = asgi_app(csv_app(calls), ServeOptions(dev=True, base_url=stepflow.url))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{port}{PATH}"
        async with aiohttp.ClientSession() as http:
            async with http.put(url) as resp:
                assert resp.status == 200, await resp.text()
                assert [f["id"] for f in (await resp.json())["functions"]] == ["process-csv-upload"]
            async with http.get(url) as resp:
                assert (await resp.json())["functions"] == ["process-csv-upload"]
        # the registered URL is the mounted one
        ids = await stepflow.client.send({"name": "imports/csv.uploaded", "data": {"rows": 60}})
        assert await stepflow.client.wait_for_output(ids[0], timeout=15) == {
            "status": "success", "processedItems": 58, "failedItems": 2}
        assert calls["download"] == 1 and calls["parse"] == 1
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def asgi_call(app: Any, method: str, path: str, query: bytes, body: bytes,
                    headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str], bytes]:
    """Call an ASGI app directly with a real scope, receive and send (the body in two chunks)."""
    chunks = [{"type": "http.request", "body": body[:10], "more_body": True},
              {"type": "http.request", "body": body[10:], "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "root_path": "", "query_string": query, "headers": headers,
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[1]["type"] == "http.response.body"
    return sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]}, sent[1]["body"]


async def test_asgi_callable_checks_signatures_and_runs_calls() -> None:
    calls = Calls()
    app = asgi_app(counting_app(calls), ServeOptions(signing_key="k", dev=False))
    body = codec.dumps(call_input({"name": "t/plain", "data": {"y": 2}}))
    status, _, answer = await asgi_call(app, "POST", PATH, b"fnId=plain", body, [(b"host", b"example.test")])
    assert status == 401 and calls["plain"] == 0
    stale = signing.sign(body, "k", at=time.time() - 1000).encode()
    status, _, _ = await asgi_call(app, "POST", PATH, b"fnId=plain", body, [(b"x-inngest-signature", stale)])
    assert status == 401 and calls["plain"] == 0
    good = signing.sign(body, "k").encode()
    status, headers, answer = await asgi_call(app, "POST", PATH, b"fnId=plain", body,
                                              [(b"x-inngest-signature", good)])
    assert status == 200 and codec.loads(answer) == {"echo": {"y": 2}}
    assert headers["content-type"] == "application/json"
    assert calls["plain"] == 1


async def test_asgi_lifespan_is_answered() -> None:
    app = asgi_app(counting_app(Calls()), ServeOptions(dev=True))
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await asyncio.wait_for(app({"type": "lifespan"}, receive, send), 2)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_wait_invoke_and_send_event_over_http(stepflow: RunningServer, serve: Serve) -> None:
    """The engine carries out the ops an endpoint reports: a wait resolved by an event the previous step sent
    (the window: events since the start of the call that reached the wait), an invocation, and events sent."""
    app = sf.App("ops")
    calls = Calls()

    @app.function(id="child", trigger=sf.event("t/child"))
    async def child(ctx: Context) -> int:
        return int(ctx.event.data["n"]) + 1

    @app.function(id="listener", trigger=sf.event("t/announce"))
    async def listener(ctx: Context) -> str:
        calls.hit("listener")
        return str(ctx.event.data["msg"])

    @app.function(id="main", trigger=sf.event("t/main"))
    async def main(ctx: Context) -> dict[str, Any]:
        async def request_approval() -> str:
            calls.hit("request")
            sent = await stepflow.client.send({"name": "t/approved", "data": {"req": ctx.event.data["req"]}})
            return sent[0]

        sent_id = await ctx.step.run("request-approval", request_approval)
        approved = await ctx.step.wait_for_event("approved", event="t/approved", match="data.req", timeout="5s")
        plus_one = await ctx.step.invoke("child", function=child, data={"n": 41})
        announced = await ctx.step.send_event("announce", {"name": "t/announce", "data": {"msg": "hi"}})
        return {"approved": approved.id if approved else None, "sent": sent_id, "child": plus_one,
                "announced": announced}

    url = await serve(app, ServeOptions(dev=True, base_url=stepflow.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:
        assert resp.status == 200
    started = time.monotonic()
    ids = await stepflow.client.send({"name": "t/main", "data": {"req": "r1"}})
    out = await stepflow.client.wait_for_output(ids[0], timeout=15)
    assert out["approved"] == out["sent"]
    assert time.monotonic() - started < 4.5   # the event resolved the wait, not its 5 s timeout
    assert out["child"] == 42
    [announce_id] = out["announced"]
    runs = await stepflow.client.get_event_runs(announce_id)
    assert [r["function_id"] for r in runs] == ["listener"]
    assert await stepflow.client.wait_for_output(runs[0]["run_id"], timeout=10) == "hi"
    assert calls["request"] == 1 and calls["listener"] == 1


async def test_inline_steps_under_the_limit_each_may_exceed_it_together(stepflow: RunningServer,
                                                                        serve: Serve) -> None:
    app = sf.App("big")
    calls = Calls()

    def chunk(name: str) -> str:
        calls.hit(name)
        return name * (700 * 1024)

    @app.function(id="f", trigger=sf.event("t/big"))
    async def f(ctx: Context) -> int:
        first = await ctx.step.run("a", chunk, "a")
        second = await ctx.step.run("b", chunk, "b")
        return len(first) + len(second)

    url = await serve(app, ServeOptions(dev=True, base_url=stepflow.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:
        assert resp.status == 200
    ids = await stepflow.client.send({"name": "t/big"})
    run = await first_run(stepflow.client, ids[0], timeout=15)
    assert run["status"] == "Completed", run.get("error")
    assert run["output"] == 2 * 700 * 1024


async def test_step_output_over_1_mib_over_http_fails_the_step_not_the_run(stepflow: RunningServer,
                                                                          serve: Serve) -> None:
    app = sf.App("big")
    calls = Calls()

    def export() -> str:
        calls.hit("export")
        return "x" * (1024 * 1024 + 1)

    @app.function(id="f", trigger=sf.event("t/big"))
    async def f(ctx: Context) -> str:
        try:
            await ctx.step.run("export", export)
        except StepError as exc:
            return exc.error_name
        return "stored?"

    url = await serve(app, ServeOptions(dev=True, base_url=stepflow.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:
        assert resp.status == 200
    ids = await stepflow.client.send({"name": "t/big"})
    assert await stepflow.client.wait_for_output(ids[0], timeout=15) == "OutputTooLarge"
    assert calls["export"] == 1
    steps = await stepflow.client.get_run_steps((await stepflow.client.get_event_runs(ids[0]))[0]["run_id"])
    assert [(s["step_id"], s["status"], s["error"]["code"]) for s in steps] == [
        ("export", "failed", "output_too_large")]
