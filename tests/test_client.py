"""The Python client, `stepflow.Client` (async) and `stepflow.SyncClient` (blocking), against real servers:
the in-process test server for the async client, and a `stepflow dev` subprocess for the sync client in a
plain, non-async test."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import RunningServer, ServerFactory, StepServer, free_port, workflow_config

from stepflow import ApiError, Client, RunFailedError, StepflowError, SyncClient, WaitTimeoutError
from stepflow.ids import is_ulid, new_ulid
from stepflow.server import ServerSettings

STEPFLOW = Path(sys.executable).parent / "stepflow"


# --- helpers -----------------------------------------------------------------------------------------------


async def two_steps(server: RunningServer, step_server: StepServer, *, id: str = "wf", event: str = "test/go",
                    first_status: int = 200, first_delay: float = 0.0) -> None:
    """`first` answers `first_status` ({"a": 1}) after `first_delay`; `second` answers {"sum": a + data.n}."""
    async def first(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        if first_delay:
            await asyncio.sleep(first_delay)
        return web.json_response({"status": first_status, "body": {"a": 1}})

    async def second(payload: dict[str, Any], __: web.Request) -> web.StreamResponse:
        total = payload["steps"]["first"]["body"]["a"] + payload["event"]["data"].get("n", 0)
        return web.json_response({"status": 200, "body": {"sum": total}})

    await server.register(workflow_config({
        "first": {"runtime": {"type": "http", "url": step_server.route(f"/{id}/first", first)}},
        "second": {"runtime": {"type": "http", "url": step_server.route(f"/{id}/second", second)},
                   "after": [{"step": "first"}]},
    }, id=id, event=event))


def held(release: asyncio.Event) -> Any:
    async def handler(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        try:
            await asyncio.wait_for(release.wait(), 10)
        except TimeoutError:
            pass
        return web.json_response({"status": 200, "body": {"released": True}})

    return handler


# --- async Client --------------------------------------------------------------------------------------------


async def test_send_returns_ids(stepflow: RunningServer) -> None:
    client = stepflow.client
    [one] = await client.send({"name": "test/one", "data": {"x": 1}})
    assert is_ulid(one)
    many = await client.send([{"name": "test/many", "data": {"i": i}} for i in range(3)])
    assert len(many) == 3 and all(is_ulid(i) for i in many) and len(set(many + [one])) == 4
    assert await client.send({"id": "given-1", "name": "test/given"}) == ["given-1"]
    assert await client.send({"id": "given-1", "name": "test/given"}) == ["given-1"]

    event = await client.get_event(one)
    assert event["id"] == one and event["name"] == "test/one" and event["data"] == {"x": 1}
    assert [(await client.get_event(i))["data"]["i"] for i in many] == [0, 1, 2]


async def test_reading_a_run_its_steps_and_its_output(stepflow: RunningServer, step_server: StepServer) -> None:
    client = stepflow.client
    await two_steps(stepflow, step_server)
    [event_id] = await client.send({"name": "test/go", "data": {"n": 41}})

    assert await client.wait_for_output(event_id, timeout=10) == {"sum": 42}
    [run] = await client.get_event_runs(event_id)
    assert run["status"] == "Completed" and run["event_id"] == event_id and run["function_id"] == "wf"
    assert await client.wait_for_output(run["run_id"], timeout=10) == {"sum": 42}  # by run id too
    assert await client.get_run(run["run_id"]) == run
    assert await client.get_run(run["run_id"], wait=5) == run
    steps = await client.get_run_steps(run["run_id"])
    assert [(s["step_id"], s["status"], s["attempts"]) for s in steps] == [("first", "completed", 1),
                                                                          ("second", "completed", 1)]
    assert steps[1]["output"] == {"status": 200, "body": {"sum": 42}}
    assert (await client.wait_for_run(run["run_id"], timeout=1))["status"] == "Completed"


async def test_wait_for_output_works_with_a_sender_given_event_id(stepflow: RunningServer,
                                                                  step_server: StepServer) -> None:
    await two_steps(stepflow, step_server)
    assert await stepflow.client.send({"id": "order-9", "name": "test/go", "data": {"n": 1}}) == ["order-9"]
    assert await stepflow.client.wait_for_output("order-9", timeout=10) == {"sum": 2}


async def test_wait_for_output_raises_run_failed_with_status_and_error(stepflow: RunningServer,
                                                                       step_server: StepServer) -> None:
    await two_steps(stepflow, step_server, first_status=400)
    [event_id] = await stepflow.client.send({"name": "test/go"})
    with pytest.raises(RunFailedError) as caught:
        await stepflow.client.wait_for_output(event_id, timeout=10)
    err = caught.value
    [run] = await stepflow.client.get_event_runs(event_id)
    assert err.run_id == run["run_id"]
    assert err.run_status == "Failed"
    assert err.error == run["error"]
    assert err.error["status"] == 400 and err.error["step_id"] == "first" and err.error["code"] == "step_error"
    assert "Failed" in str(err) and "step_error" in str(err)
    assert isinstance(err, StepflowError)
    assert "/wf/second" not in step_server.calls


async def test_cancel_and_waiting_on_a_cancelled_run(stepflow: RunningServer, step_server: StepServer) -> None:
    client = stepflow.client
    await two_steps(stepflow, step_server, first_delay=0.5)
    [event_id] = await client.send({"name": "test/go"})
    [run] = await client.get_event_runs(event_id)
    deadline = time.monotonic() + 5
    while "/wf/first" not in step_server.calls:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    cancelled = await client.cancel(run["run_id"])
    assert cancelled["run_id"] == run["run_id"] and cancelled["status"] == "Cancelled"
    with pytest.raises(RunFailedError) as caught:
        await client.wait_for_output(run["run_id"], timeout=5)
    assert caught.value.run_status == "Cancelled" and caught.value.run_id == run["run_id"]
    await asyncio.sleep(0.7)  # the running step ends; the next one must not start
    assert "/wf/second" not in step_server.calls
    assert (await client.get_run(run["run_id"]))["status"] == "Cancelled"


async def test_wait_for_output_times_out_with_the_runs_status(stepflow: RunningServer,
                                                              step_server: StepServer) -> None:
    release = asyncio.Event()
    url = step_server.route("/held", held(release))
    await stepflow.register(workflow_config({"only": {"runtime": {"type": "http", "url": url}}}))
    [event_id] = await stepflow.client.send({"name": "test/go"})
    try:
        began = time.monotonic()
        with pytest.raises(WaitTimeoutError) as caught:
            await stepflow.client.wait_for_output(event_id, timeout=0.5)
        elapsed = time.monotonic() - began
        assert 0.45 <= elapsed < 5
        [run] = await stepflow.client.get_event_runs(event_id)
        assert caught.value.run_id == run["run_id"]
        assert caught.value.run_status in ("Queued", "Running")
        assert "0.5s" in str(caught.value)
        with pytest.raises(WaitTimeoutError):
            await stepflow.client.wait_for_run(run["run_id"], timeout=0.2)
    finally:
        release.set()
    assert await stepflow.client.wait_for_output(event_id, timeout=10) == {"released": True}


async def test_waiting_on_an_event_that_started_nothing_times_out(stepflow: RunningServer) -> None:
    [event_id] = await stepflow.client.send({"name": "nobody/listens"})
    with pytest.raises(WaitTimeoutError) as caught:
        await stepflow.client.wait_for_output(event_id, timeout=0.3)
    assert caught.value.run_id is None and caught.value.run_status is None


async def test_list_runs_pages_and_filters(stepflow: RunningServer, step_server: StepServer) -> None:
    client = stepflow.client
    await two_steps(stepflow, step_server, id="good", event="test/good")
    await two_steps(stepflow, step_server, id="bad", event="test/bad", first_status=404)
    sent = [(await client.send({"name": name}))[0]
            for name in ("test/good", "test/bad", "test/good", "test/good", "test/bad")]
    run_ids = [(await client.get_event_runs(e))[0]["run_id"] for e in sent]
    for run_id in run_ids:
        await client.wait_for_run(run_id, timeout=10)

    page = await client.list_runs()
    assert set(page) == {"data", "cursor", "has_more"}
    assert [r["run_id"] for r in page["data"]] == run_ids[::-1] and page["has_more"] is False

    collected: list[str] = []
    cursor = None
    while True:
        page = await client.list_runs(limit=2, cursor=cursor)
        assert len(page["data"]) <= 2
        collected += [r["run_id"] for r in page["data"]]
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert collected == run_ids[::-1]

    good = await client.list_runs(function_id="good")
    assert [r["run_id"] for r in good["data"]] == [run_ids[3], run_ids[2], run_ids[0]]
    failed = await client.list_runs(status="Failed")
    assert [r["run_id"] for r in failed["data"]] == [run_ids[4], run_ids[1]]
    assert (await client.list_runs(status="Failed", function_id="good"))["data"] == []


async def test_api_errors_carry_status_code_and_message(stepflow: RunningServer) -> None:
    client = stepflow.client
    missing = new_ulid()
    with pytest.raises(ApiError) as caught:
        await client.get_run(missing)
    assert caught.value.status == 404 and caught.value.code == "not_found" and missing in caught.value.api_message
    with pytest.raises(ApiError) as caught:
        await client.get_run_steps("not-a-run")
    assert caught.value.status == 400 and caught.value.code == "invalid_request"
    with pytest.raises(ApiError) as caught:
        await client.get_event("no-such-event")
    assert caught.value.status == 404
    with pytest.raises(ApiError) as caught:
        await client.cancel(missing)
    assert caught.value.status == 404
    with pytest.raises(ApiError) as caught:
        await client.send({"name": "test/go", "data": [1]})
    assert caught.value.status == 400 and "'data' must be an object" in caught.value.api_message
    with pytest.raises(ApiError) as caught:
        await client.list_runs(status="Sleeping")
    assert caught.value.status == 400 and "Sleeping" in caught.value.api_message


async def test_an_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with Client(url) as client:
        with pytest.raises(ApiError) as caught:
            await client.get_run(new_ulid())
    assert caught.value.status == 0 and caught.value.code == "unreachable" and url in str(caught.value)


async def test_keys_are_sent_and_required(stepflow_factory: ServerFactory, step_server: StepServer) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["sk"], event_keys=["ek"], dev=False))
    await two_steps(server, step_server)
    [event_id] = await server.client.send({"name": "test/go", "data": {"n": 1}})
    assert await server.client.wait_for_output(event_id, timeout=10) == {"sum": 2}

    async with Client(server.url, signing_key="", event_key="wrong") as anonymous:
        with pytest.raises(ApiError) as caught:
            await anonymous.get_event_runs(event_id)
        assert caught.value.status == 401 and caught.value.code == "unauthorized"
        with pytest.raises(ApiError) as caught:
            await anonymous.send({"name": "test/go"})
        assert caught.value.status == 401
    async with Client(server.url, signing_key="nope", event_key="ek") as wrong_signing:
        with pytest.raises(ApiError) as caught:
            await wrong_signing.wait_for_output(event_id, timeout=1)
        assert caught.value.status == 401


async def test_settings_come_from_the_environment(stepflow_factory: ServerFactory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["env-sk"], event_keys=["env-ek"]))
    monkeypatch.setenv("STEPFLOW_BASE_URL", server.url + "/")
    monkeypatch.setenv("STEPFLOW_SIGNING_KEY", "env-sk")
    monkeypatch.setenv("STEPFLOW_EVENT_KEY", "env-ek")
    async with Client() as client:
        assert client.base_url == server.url
        [event_id] = await client.send({"name": "test/env"})
        assert await client.get_event_runs(event_id) == []
    # an explicit argument beats the environment
    async with Client(signing_key="other") as client:
        with pytest.raises(ApiError) as caught:
            await client.get_event(event_id)
        assert caught.value.status == 401


async def test_a_closed_client_can_be_used_again(stepflow: RunningServer) -> None:
    client = Client(stepflow.url)
    await client.send({"name": "test/a"})
    await client.close()
    await client.close()  # closing twice is harmless
    assert len(await client.send({"name": "test/b"})) == 1
    await client.close()


# --- SyncClient against a `stepflow dev` subprocess ----------------------------------------------------------


class _Steps(BaseHTTPRequestHandler):
    """A tiny real step server on a thread: /add sums data.a + data.b, /fail answers 400, /hold blocks."""

    release = threading.Event()

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/add":
            data = payload["event"]["data"]
            answer: dict[str, Any] = {"status": 200, "body": {"sum": data["a"] + data["b"]}}
        elif self.path == "/hold":
            self.release.wait(10)
            answer = {"status": 200, "body": {"held": True}}
        else:
            answer = {"status": 400, "body": {"reason": "refused"}}
        raw = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def thread_step_server() -> Iterator[str]:
    _Steps.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Steps)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        _Steps.release.set()
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def stepflow_dev(tmp_path: Path, *files: Path) -> Iterator[str]:
    """`stepflow dev` in a subprocess, waited for until it answers; stopped with SIGINT at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}
    log = tmp_path / f"stepflow-dev-{port}.log"
    args = [str(STEPFLOW), "dev", "--port", str(port), "--db", str(tmp_path / "x.db"), "--backoff-base", "0.01"]
    for f in files:
        args += ["-f", str(f)]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"stepflow dev exited with {proc.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"stepflow dev did not listen within 20s: {log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sync_client_against_a_dev_server(tmp_path: Path) -> None:
    with thread_step_server() as steps_url:
        functions = [
            {"id": "adder", "triggers": [{"event": "math/add"}],
             "steps": {"add": {"runtime": {"type": "http", "url": steps_url + "/add"}}}},
            {"id": "breaker", "triggers": [{"event": "math/break"}],
             "steps": {"fail": {"runtime": {"type": "http", "url": steps_url + "/fail"}}}},
            {"id": "holder", "triggers": [{"event": "math/hold"}],
             "steps": {"hold": {"runtime": {"type": "http", "url": steps_url + "/hold"}},
                       "after": {"runtime": {"type": "http", "url": steps_url + "/add"},
                                 "after": [{"step": "hold"}]}}},
        ]
        wf = tmp_path / "functions.json"
        wf.write_text(json.dumps(functions))
        with stepflow_dev(tmp_path, wf) as url, SyncClient(url) as client:
            [event_id] = client.send({"name": "math/add", "data": {"a": 2, "b": 3}})
            assert is_ulid(event_id)
            assert client.wait_for_output(event_id, timeout=10) == {"sum": 5}
            assert client.get_event(event_id)["data"] == {"a": 2, "b": 3}
            [run] = client.get_event_runs(event_id)
            assert run["status"] == "Completed" and run["function_id"] == "adder" and run["output"] == {"sum": 5}
            assert client.get_run(run["run_id"]) == run
            assert client.wait_for_run(run["run_id"], timeout=5) == run
            [step] = client.get_run_steps(run["run_id"])
            assert step["step_id"] == "add" and step["status"] == "completed" and step["attempts"] == 1

            [bad] = client.send({"name": "math/break"})
            with pytest.raises(RunFailedError) as caught:
                client.wait_for_output(bad, timeout=10)
            assert caught.value.run_status == "Failed"
            assert caught.value.error["status"] == 400 and caught.value.error["body"] == {"reason": "refused"}

            [hold] = client.send({"name": "math/hold", "data": {"a": 1, "b": 1}})
            with pytest.raises(WaitTimeoutError) as timed_out:
                client.wait_for_output(hold, timeout=0.5)
            assert timed_out.value.run_status == "Running"
            hold_run = client.get_event_runs(hold)[0]["run_id"]
            assert client.cancel(hold_run)["status"] == "Cancelled"
            _Steps.release.set()
            with pytest.raises(RunFailedError) as was_cancelled:
                client.wait_for_output(hold_run, timeout=10)
            assert was_cancelled.value.run_status == "Cancelled"

            listed = client.list_runs(limit=10)
            assert [r["function_id"] for r in listed["data"]] == ["holder", "breaker", "adder"]
            assert [r["run_id"] for r in client.list_runs(status="Failed")["data"]] == \
                [client.get_event_runs(bad)[0]["run_id"]]
            with pytest.raises(ApiError) as caught_api:
                client.get_run(new_ulid())
            assert caught_api.value.status == 404
