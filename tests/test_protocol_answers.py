"""Every answer an SDK can give moves the run or fails it with a named error — never a silent hang.

A real HTTP server plays the SDK, answering scripted ops of the public protocol (as the official SDKs would),
so each path is driven exactly: StepFailed, a step planned again while pending, an unknown op, an empty 206.
The store's invariant (a run that has not ended always has something pending) is tested on the store itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningServer, StepServer

from stepflow import codec


def h(step_id: str) -> str:
    return hashlib.sha1(step_id.encode()).hexdigest()


Answer = Callable[[dict[str, Any], web.Request], Awaitable[tuple[int, Any]]]


async def code_function(server: RunningServer, step_server: StepServer, answer: Answer, *, retries: int = 1,
                        fid: str = "fn") -> str:
    """Register a code function served by `answer` (status, body); returns its route on the step server."""
    async def handler(payload: dict[str, Any], request: web.Request) -> web.StreamResponse:
        status, body = await answer(payload, request)
        return web.json_response(body, status=status)

    url = step_server.route(f"/{fid}", handler)
    await server.register({"id": fid, "app_id": "scripted", "triggers": [{"event": f"test/{fid}"}],
                           "runtime": {"type": "http", "url": url}, "retries": retries})
    return f"/{fid}"


async def start(server: RunningServer, fid: str = "fn") -> dict[str, Any]:
    ids = await server.client.send({"name": f"test/{fid}", "data": {"n": 1}})
    for _ in range(200):
        runs = await server.client.get_event_runs(ids[0])
        if runs:
            return await server.client.wait_for_run(runs[0]["run_id"], timeout=30)
        await __import__("asyncio").sleep(0.05)
    raise AssertionError("no run started")


async def test_calls_carry_the_public_input_and_query(stepflow: RunningServer, step_server: StepServer) -> None:
    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        return 200, {"ok": True}

    path = await code_function(stepflow, step_server, answer)
    run = await start(stepflow)
    assert run["status"] == "Completed" and run["output"] == {"ok": True}
    payload = step_server.calls[path][0]
    assert set(payload) >= {"event", "events", "steps", "ctx", "use_api", "version"}
    assert payload["use_api"] is False and payload["steps"] == {} and payload["events"] == [payload["event"]]
    ctx = payload["ctx"]
    assert ctx["run_id"] == run["run_id"] and ctx["attempt"] == 0 and ctx["max_attempts"] == 2
    assert ctx["disable_immediate_execution"] is False and ctx["use_api"] is False
    assert ctx["stack"] == {"stack": [], "current": 0} and ctx["step_id"] == "step"
    assert "fn_id" not in ctx  # it would switch the JS SDK v4 to Inngest Cloud's checkpoint API
    assert isinstance(payload["event"]["ts"], int) and payload["event"]["data"] == {"n": 1}


async def test_step_failed_memoizes_the_error_and_calls_the_function_again(
        stepflow: RunningServer, step_server: StepServer) -> None:
    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        memo = payload["steps"].get(h("charge"))
        if memo is None:
            return 206, [{"op": "StepFailed", "id": h("charge"), "name": "charge", "displayName": "charge",
                          "error": {"name": "ValueError", "message": "card declined", "stack": "Traceback…"}}]
        return 200, {"caught": memo["error"], "stack": payload["ctx"]["stack"]}

    await code_function(stepflow, step_server, answer)
    run = await start(stepflow)
    assert run["status"] == "Completed", run
    assert run["output"]["caught"]["name"] == "ValueError"
    assert run["output"]["caught"]["message"] == "card declined"
    assert run["output"]["stack"] == {"stack": [h("charge")], "current": 1}
    steps = await stepflow.client.get_run_steps(run["run_id"])
    assert [(s["status"], s["attempts"], s["error"]["message"]) for s in steps] == [("failed", 1, "card declined")]


async def test_an_unknown_op_is_an_attempt_error_and_fails_the_run_naming_it(
        stepflow: RunningServer, step_server: StepServer) -> None:
    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        return 206, [{"op": "Foo", "id": h("x"), "name": "x", "displayName": "x"}]

    path = await code_function(stepflow, step_server, answer, retries=2)
    run = await start(stepflow)
    assert run["status"] == "Failed", run
    assert run["error"]["code"] == "unknown_op"
    assert "the SDK answered 'Foo' for step 'x'" in run["error"]["message"]
    assert "gave up after 3 attempts" in run["error"]["message"]
    assert [c["ctx"]["attempt"] for c in step_server.calls[path]] == [0, 1, 2]  # retried like a 5xx


async def test_a_step_planned_again_while_pending_is_retried_then_fails(
        stepflow: RunningServer, step_server: StepServer) -> None:
    """An SDK that does not read `?stepId=` re-plans the parallel steps on every targeted call."""
    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        return 206, [{"op": "StepPlanned", "id": h(s), "name": s, "displayName": s} for s in ("a", "b")]

    path = await code_function(stepflow, step_server, answer, retries=1)
    run = await start(stepflow)
    assert run["status"] == "Failed", run
    assert run["error"]["code"] == "no_progress"
    assert "the step this call targeted: the SDK did not run it" in run["error"]["message"]
    targets = [request_target(c) for c in step_server.calls[path]]
    assert targets[0] == "step" and set(targets[1:]) <= {h("a"), h("b")}
    assert len(targets) <= 1 + 2 * 2  # each planned step's call at most twice (retries=1): no endless loop
    steps = await stepflow.client.get_run_steps(run["run_id"])
    assert any((s["error"] or {}).get("code") == "no_progress" for s in steps), steps


def request_target(payload: dict[str, Any]) -> str:
    return str(payload["ctx"]["step_id"])


async def test_a_targeted_call_is_addressed_by_the_query(stepflow: RunningServer, step_server: StepServer) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        target = request.query.get("stepId")
        seen.append((request.query.get("fnId"), target))
        if target in (h("a"), h("b")):
            return 206, [{"op": "StepRun", "id": target, "name": "x", "data": target[:4]}]
        if len(payload["steps"]) == 2:
            return 200, sorted(memo["data"] for memo in payload["steps"].values())
        return 206, [{"op": "StepPlanned", "id": h(s), "name": s, "displayName": s} for s in ("a", "b")]

    await code_function(stepflow, step_server, answer)
    run = await start(stepflow)
    assert run["status"] == "Completed" and run["output"] == sorted([h("a")[:4], h("b")[:4]])
    assert seen[0] == ("fn", "step") and sorted(str(t) for _, t in seen[1:3]) == sorted([h("a"), h("b")])
    assert seen[3] == ("fn", "step") and len(seen) == 4


async def test_an_empty_answer_is_no_progress(stepflow: RunningServer, step_server: StepServer) -> None:
    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        return 206, []

    await code_function(stepflow, step_server, answer, retries=0)
    run = await start(stepflow)
    assert run["status"] == "Failed" and run["error"]["code"] == "no_progress"
    assert "206 with no op" in run["error"]["message"]


async def test_sleep_durations_in_the_name_are_honoured(stepflow: RunningServer, step_server: StepServer) -> None:
    """The JS SDK writes a sleep's duration in the op's name ("1s") with empty opts."""
    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        if h("nap") not in payload["steps"]:
            return 206, [{"op": "Sleep", "id": h("nap"), "name": "1s", "displayName": "nap", "opts": {}}]
        return 200, "awake"

    await code_function(stepflow, step_server, answer)
    run = await start(stepflow)
    assert run["status"] == "Completed" and run["output"] == "awake"
    steps = await stepflow.client.get_run_steps(run["run_id"])
    nap = steps[0]
    assert nap["status"] == "completed"
    slept = _ms(nap["ended_at"]) - _ms(run["run_started_at"])
    assert slept >= 950, f"the sleep lasted {slept} ms, not 1 s"


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)


async def test_events_nested_too_deep_to_deliver_are_refused(stepflow: RunningServer) -> None:
    data: dict[str, Any] = {}
    cursor = data
    for _ in range(252):
        cursor["a"] = {}
        cursor = cursor["a"]
    async with aiohttp.ClientSession() as http, http.post(f"{stepflow.url}/e/dev", data=codec.dumps(
            {"name": "test/deep", "data": data})) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert "nests deeper than 100 levels" in body["error"] and body["code"] == "invalid_request"
    assert (await stepflow.client._request("GET", "/v1/runs"))["data"] == []


async def test_retry_after_on_a_206_step_error_is_honoured(stepflow: RunningServer, step_server: StepServer) -> None:
    """The JS SDKs answer a step's RetryAfterError with `206 [StepError]` and a `Retry-After` header."""
    arrivals: list[float] = []

    async def handler(payload: dict[str, Any], request: web.Request) -> web.StreamResponse:
        import time

        if h("flaky") in payload["steps"]:
            return web.json_response(payload["steps"][h("flaky")]["data"])
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            return web.json_response([{"op": "StepError", "id": h("flaky"), "name": "flaky", "displayName": "flaky",
                                       "error": {"name": "RetryAfterError", "message": "later"}}],
                                     status=206, headers={"Retry-After": "1"})
        return web.json_response([{"op": "StepRun", "id": h("flaky"), "name": "flaky", "data": "done"}], status=206)

    url = step_server.route("/ra", handler)
    await stepflow.register({"id": "ra", "app_id": "scripted", "triggers": [{"event": "test/ra"}],
                             "runtime": {"type": "http", "url": url}, "retries": 2})
    run = await start(stepflow, "ra")
    assert run["status"] == "Completed" and run["output"] == "done"
    assert arrivals[1] - arrivals[0] >= 0.95, "retried before the step's Retry-After"


@pytest.mark.parametrize("form", ["raw", "js-hash", "python-hash", "fallback"])
async def test_a_sync_is_accepted_with_every_form_of_the_signing_key(stepflow_factory: Any, form: str) -> None:
    from stepflow.protocol.signing import hash_signing_key
    from stepflow.server import ServerSettings

    key, fallback = "signkey-test-" + "ab" * 32, "signkey-test-" + "cd" * 32
    server = await stepflow_factory(settings=ServerSettings(signing_keys=[key, fallback], event_keys=["e"]))
    token = {"raw": key, "js-hash": hash_signing_key(key), "python-hash": hash_signing_key(key).split("-")[-1],
             "fallback": hash_signing_key(fallback)}[form]
    sync = {"appname": "py-app", "deploy_type": "ping", "framework": "fast_api", "sdk": "py:v0.5.19", "v": "0.1",
            "url": "http://127.0.0.1:9/api/inngest",
            "functions": [{"id": "py-app-hello", "name": "hello", "triggers": [{"event": "app/hello"}],
                           "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 1},
                                              "runtime": {"type": "http", "url": "http://127.0.0.1:9/api/inngest"
                                                          "?fnId=py-app-hello&stepId=step"}}}}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/fn/register", json=sync,
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["functions"] == [{"id": "py-app-hello", "version": 1}]
        async with http.post(f"{server.url}/fn/register", json=sync,
                             headers={"Authorization": f"Bearer {token[:-2]}00"}) as resp:
            assert resp.status == 401
            body = await resp.json()
    # the shape the SDKs parse: `error` is a string
    assert body["code"] == "unauthorized" and "signing key is not valid" in body["error"]
    [fn] = (await server.client._request("GET", "/v1/functions"))["data"]
    assert fn["app_id"] == "py-app" and fn["triggers"] == [{"event": "app/hello"}]
    stored = await server.engine.functions.get("py-app-hello", 1)
    assert stored.retries.attempts == 2  # Inngest's retries: 1 is one retry, two attempts in all


async def test_a_syncs_batching_is_translated_and_a_bad_value_refused_naming_it(stepflow: RunningServer) -> None:
    sync = {"appName": "js-app", "framework": "express", "url": "http://127.0.0.1:9/api/inngest",
            "functions": [{"id": "js-app-batched", "name": "batched", "triggers": [{"event": "app/x"}],
                           "batchEvents": {"maxSize": 10, "timeout": "5s", "key": "event.data.user"},
                           "steps": {"step": {"id": "step", "name": "step",
                                              "runtime": {"type": "http", "url": "http://127.0.0.1:9/x"}}}}]}
    async with aiohttp.ClientSession() as http, http.post(f"{stepflow.url}/fn/register", json=sync) as resp:
        assert resp.status == 200, await resp.text()
    [listed] = await stepflow.client.list_functions()
    assert listed["flow_control"] == {"batch_events": {"max_size": 10, "timeout": 5.0, "key": "event.data.user"}}
    sync["functions"][0]["batchEvents"] = {"maxSize": 10, "timeout": "5m"}  # type: ignore[index]
    async with aiohttp.ClientSession() as http, http.post(f"{stepflow.url}/fn/register", json=sync) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert "'batch_events.timeout' must be between 1s and 1m" in body["error"] and "js-app-batched" in body["error"]


async def test_a_syncs_flow_control_is_translated_and_kept(stepflow: RunningServer) -> None:
    sync = {"appName": "js-app", "framework": "express", "url": "http://127.0.0.1:9/api/inngest",
            "functions": [{"id": "js-app-limited", "name": "limited", "triggers": [{"event": "app/x"}],
                           "concurrency": [{"limit": 5, "key": "event.data.user", "scope": "env"},
                                           {"limit": 50}],
                           "throttle": {"limit": 3, "period": "10s", "burst": 1, "key": None},
                           "rateLimit": {"limit": 100, "period": "1h", "key": "event.data.user"},
                           "steps": {"step": {"id": "step", "name": "step",
                                              "runtime": {"type": "http", "url": "http://127.0.0.1:9/x"}}}}]}
    async with aiohttp.ClientSession() as http, http.post(f"{stepflow.url}/fn/register", json=sync) as resp:
        assert resp.status == 200, await resp.text()
    stored = await stepflow.engine.functions.get("js-app-limited", 1)
    assert stored.flow.to_config() == {
        "concurrency": [{"limit": 5, "key": "event.data.user", "scope": "all"}, {"limit": 50}],
        "throttle": {"limit": 3, "period": 10.0, "burst": 1},
        "rate_limit": {"limit": 100, "period": 3600.0, "key": "event.data.user"}}
    sync["functions"][0]["throttle"] = {"limit": 0, "period": "10s"}  # type: ignore[index]
    async with aiohttp.ClientSession() as http, http.post(f"{stepflow.url}/fn/register", json=sync) as resp:
        assert resp.status == 400
        assert "'throttle.limit' must be a whole number from 1" in (await resp.json())["error"]


def test_a_streamed_sdk_answer_is_unwrapped() -> None:
    """INNGEST_STREAMING: 201 at once, whitespace while the function runs, then the real answer's envelope."""
    from stepflow.protocol.answers import Delivery, interpret

    ops = [{"op": "StepRun", "id": h("a"), "name": "a", "data": 1}]
    raw = b"    " + codec.dumps({"status": 206, "headers": {"X-Inngest-No-Retry": "false"},
                                 "body": codec.dumps(ops).decode()})
    answer = interpret(Delivery(body=raw, status=201), sdk_call=True, max_output_bytes=1024)
    assert (answer.response.status, answer.response.body) == (206, ops)
    failed = interpret(Delivery(body=b" " + codec.dumps({"status": 500, "headers": {"Retry-After": "2"},
                                                         "body": '{"name": "Error", "message": "x"}'}),
                                status=201), sdk_call=True, max_output_bytes=1024)
    assert failed.response.status == 500 and failed.response.body["message"] == "x" and failed.retry_after == 2.0


async def test_ops_asking_for_what_stepflow_does_not_provide_fail_the_step_saying_so(
        stepflow: RunningServer, step_server: StepServer) -> None:
    async def answer(payload: dict[str, Any], request: web.Request) -> tuple[int, Any]:
        memo = payload["steps"].get(h("ask-model"))
        if memo is None:
            return 206, [{"op": "AIGateway", "id": h("ask-model"), "name": "ask-model", "displayName": "ask-model",
                          "opts": {"url": "https://api.example/v1/chat", "body": {}}}]
        return 200, {"caught": memo["error"]["message"]}

    await code_function(stepflow, step_server, answer)
    run = await start(stepflow)
    assert run["status"] == "Completed", run
    assert "step 'ask-model' is a AIGateway step, which stepflow does not support" in run["output"]["caught"]
    assert "call it inside step.run" in run["output"]["caught"]


@pytest.mark.parametrize(("sync", "needle"), [
    ({"app_id": None, "functions": []}, "'app_id' must be a non-empty string"),
    ({"app_id": "a\u0000b", "functions": []}, "printable"),
    ({"appName": "", "framework": "express", "functions": []}, "no 'appName'"),
    ({"appName": "js\u0000app", "framework": "express", "functions": []}, "control character U+0000"),
    ({"appName": "js-app", "framework": "express", "functions": {"not": "a list"}}, "'functions' must be a list"),
], ids=["app-id-null", "app-id-nul", "app-name-empty", "app-name-nul", "functions-object"])
async def test_malformed_syncs_are_400_and_register_nothing(stepflow: RunningServer, sync: dict[str, Any],
                                                           needle: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{stepflow.url}/fn/register", json=sync) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert needle in body["error"] and body["status"] == 400, body
    assert (await stepflow.client._request("GET", "/v1/functions"))["data"] == []
