"""The http runtime and the step contract (docs/step-contract.md), against a real stepflow server and real step servers:
the Input document, every form of answer, retries (5xx, no answer, Retry-After, X-Inngest-No-Retry), no retry on
4xx, the 1 MiB output limit and request signatures."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import re
import time
from typing import Any

import pytest
from aiohttp import web
from conftest import RunningServer, ServerFactory, StepServer, free_port, workflow_config

from stepflow.engine import EngineConfig
from stepflow.errors import UnauthorizedError
from stepflow.protocol import signing
from stepflow.protocol.answers import parse_retry_after
from stepflow.protocol.contract import canonical_json

MiB = 1024 * 1024


async def run_to_end(server: RunningServer, steps: dict[str, Any], *, data: dict[str, Any] | None = None,
                     timeout: float = 15, **extra: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Register a workflow, send one event, wait for the run to end; return the run and its steps by id."""
    await server.register(workflow_config(steps, **extra))
    ids = await server.client.send({"name": "test/go", "data": data or {}})
    runs = await server.client.get_event_runs(ids[0])
    assert len(runs) == 1
    run = await server.client.wait_for_run(runs[0]["run_id"], timeout=timeout)
    step_list = await server.client.get_run_steps(run["run_id"])
    return run, {s["step_id"]: s for s in step_list}


def http(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, **options}


def raw_answer(body: bytes, status: int = 200, headers: dict[str, str] | None = None,
               content_type: str | None = "application/json") -> Any:
    async def handler(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        response = web.Response(body=body, status=status, headers=headers)
        if content_type:
            response.content_type = content_type
        return response
    return handler


# --- the Input -----------------------------------------------------------------------------------------------


async def test_input_is_posted_as_json_with_event_events_steps_and_ctx(stepflow: RunningServer,
                                                                       step_server: StepServer) -> None:
    methods: list[str] = []

    async def first(_: dict[str, Any], request: web.Request) -> web.StreamResponse:
        methods.append(request.method)
        return web.json_response({"status": 200, "body": {"rows": 98}})

    a = step_server.route("/a", first)
    b = step_server.json("/b", {"status": 201, "body": "done"})
    run, steps = await run_to_end(stepflow, {
        "a": {"runtime": http(a, headers={"X-Team": "imports"})},
        "b": {"runtime": http(b), "after": ["a"], "retries": {"attempts": 3}},
    }, data={"file": "upload.csv"})
    assert run["status"] == "Completed"
    assert methods == ["POST"]

    headers = step_server.headers["/a"][0]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Team"] == "imports"
    assert "X-Inngest-Signature" not in headers  # no signing key configured

    first_input = step_server.calls["/a"][0]
    assert set(first_input) == {"event", "events", "steps", "ctx"}
    event = first_input["event"]
    assert event["name"] == "test/go" and event["data"] == {"file": "upload.csv"}
    assert event["id"] == run["event_id"] and isinstance(event["ts"], int)
    assert first_input["events"] == [event]
    assert first_input["steps"] == {}
    traceparent = first_input["ctx"].pop("traceparent")
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", traceparent) and headers["traceparent"] == traceparent
    assert first_input["ctx"] == {"run_id": run["run_id"], "function_id": "wf", "app_id": "default",
                                  "step_id": "a", "attempt": 0, "max_attempts": 5}

    second_input = step_server.calls["/b"][0]
    assert second_input["event"] == event
    assert second_input["steps"] == {"a": {"status": 200, "body": {"rows": 98}}}
    assert second_input["ctx"]["step_id"] == "b" and second_input["ctx"]["max_attempts"] == 3

    assert steps["a"]["output"] == {"status": 200, "body": {"rows": 98}}
    assert steps["b"]["output"] == {"status": 201, "body": "done"}
    assert run["output"] == "done"


# --- the answer ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http_status, body, expected", [
    (200, b'{"status": 200, "body": {"processedItems": 98}}', {"status": 200, "body": {"processedItems": 98}}),
    (200, b'{"status": 201, "body": [1, 2]}', {"status": 201, "body": [1, 2]}),
    (200, b'{"statusCode": 202, "body": {"x": 1}}', {"status": 202, "body": {"x": 1}}),
    (200, b'{"status": "200", "body": 7}', {"status": 200, "body": 7}),
    # a body that is a string holding JSON is decoded (API Gateway / Lambda style)
    (200, b'{"statusCode": 200, "body": "{\\"x\\": [1, 2]}"}', {"status": 200, "body": {"x": [1, 2]}}),
    (200, b'{"status": 200, "body": "[true, null]"}', {"status": 200, "body": [True, None]}),
    # ... but a plain string stays a string
    (200, b'{"status": 200, "body": "plain text"}', {"status": 200, "body": "plain text"}),
    (200, b'{"status": 200, "body": "{not json"}', {"status": 200, "body": "{not json"}),
    (200, b'{"status": 200}', {"status": 200, "body": None}),
    # a bare body: status 200 (or the HTTP status)
    (200, b'{"rows": 98}', {"status": 200, "body": {"rows": 98}}),
    (200, b'[1, "two"]', {"status": 200, "body": [1, "two"]}),
    (200, b'"hello"', {"status": 200, "body": "hello"}),
    (200, b'3.5', {"status": 200, "body": 3.5}),
    (201, b'{"created": true}', {"status": 201, "body": {"created": True}}),
    # no body: the HTTP status answers
    (204, b'', {"status": 204, "body": None}),
    (200, b'', {"status": 200, "body": None}),
])
async def test_answer_forms(stepflow: RunningServer, step_server: StepServer, http_status: int, body: bytes,
                            expected: dict[str, Any]) -> None:
    url = step_server.route("/a", raw_answer(body, http_status))
    seen = step_server.json("/next", {"ok": True})
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url)},
                                             "next": {"runtime": http(seen), "after": ["a"]}})
    assert run["status"] == "Completed", run
    assert steps["a"]["output"] == expected
    assert steps["a"]["attempts"] == 1 and steps["a"]["error"] is None
    # stored as {status, body} and visible to the next step's Input exactly so
    assert step_server.calls["/next"][0]["steps"]["a"] == expected


async def test_output_is_stored_whole_just_under_the_limit(stepflow: RunningServer,
                                                           step_server: StepServer) -> None:
    text = "x" * (MiB - 100)
    url = step_server.json("/big", {"status": 200, "body": text})
    run, steps = await run_to_end(stepflow, {"big": {"runtime": http(url)}})
    assert run["status"] == "Completed"
    assert run["output"] == text  # never truncated
    assert steps["big"]["output"]["body"] == text


# --- 4xx: fail now ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http_status, body, status, error_body", [
    (404, b'{"error": "no such file"}', 404, {"error": "no such file"}),
    (400, b'', 400, None),
    (200, b'{"status": 422, "body": {"reason": "bad row"}}', 422, {"reason": "bad row"}),
    (200, b'{"statusCode": 403}', 403, None),
    (409, b'conflict!', 409, "conflict!"),  # not JSON, but the HTTP status answers
])
async def test_4xx_fails_step_and_run_without_retry(stepflow: RunningServer, step_server: StepServer,
                                                    http_status: int, body: bytes, status: int,
                                                    error_body: Any) -> None:
    url = step_server.route("/a", raw_answer(body, http_status))
    after = step_server.json("/after", {"ok": True})
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url)},
                                             "after": {"runtime": http(after), "after": ["a"]}})
    assert run["status"] == "Failed"
    assert len(step_server.calls["/a"]) == 1
    assert "/after" not in step_server.calls  # nothing after the failed step runs
    step = steps["a"]
    assert step["status"] == "failed" and step["attempts"] == 1 and step["output"] is None
    assert step["error"]["code"] == "step_error"
    assert step["error"]["status"] == status
    assert step["error"]["body"] == error_body
    assert "not retried" in step["error"]["message"]
    assert run["error"]["step_id"] == "a" and run["error"]["status"] == status
    assert run["output"] is None


# --- 5xx and no answer: retried --------------------------------------------------------------------------


async def test_5xx_is_retried_five_attempts_by_default_then_gives_up(stepflow: RunningServer,
                                                                     step_server: StepServer) -> None:
    url = step_server.route("/a", raw_answer(b'', 500))
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url)}})
    calls = step_server.calls["/a"]
    assert len(calls) == 5
    assert [c["ctx"]["attempt"] for c in calls] == [0, 1, 2, 3, 4]
    assert {c["ctx"]["max_attempts"] for c in calls} == {5}
    assert run["status"] == "Failed"
    step = steps["a"]
    assert step["status"] == "failed" and step["attempts"] == 5
    assert step["error"]["status"] == 500 and step["error"]["attempt"] == 4
    assert "gave up after 5 attempts" in step["error"]["message"]
    assert "gave up after 5 attempts" in run["error"]["message"]


async def test_5xx_in_the_body_of_a_200_is_retried(stepflow: RunningServer, step_server: StepServer) -> None:
    url = step_server.json("/a", {"status": 503, "body": {"why": "busy"}})
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url), "retries": {"attempts": 2}}})
    assert len(step_server.calls["/a"]) == 2
    assert run["status"] == "Failed"
    assert steps["a"]["error"]["status"] == 503 and steps["a"]["error"]["body"] == {"why": "busy"}


async def test_a_proxy_5xx_wins_over_a_success_status_in_its_body(stepflow: RunningServer,
                                                                  step_server: StepServer) -> None:
    url = step_server.route("/a", raw_answer(b'{"status": 200, "body": "stale"}', 502))
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url), "retries": {"attempts": 2}}})
    assert len(step_server.calls["/a"]) == 2
    assert run["status"] == "Failed" and steps["a"]["error"]["status"] == 502


async def test_per_step_attempts(stepflow: RunningServer, step_server: StepServer) -> None:
    url = step_server.json("/a", {"oops": True}, status=500)
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url), "retries": {"attempts": 3}}})
    assert len(step_server.calls["/a"]) == 3
    assert [c["ctx"]["max_attempts"] for c in step_server.calls["/a"]] == [3, 3, 3]
    assert run["status"] == "Failed" and steps["a"]["attempts"] == 3
    assert "gave up after 3 attempts" in steps["a"]["error"]["message"]
    assert steps["a"]["error"]["body"] == {"oops": True}


async def test_function_level_retries_and_step_override(stepflow: RunningServer,
                                                        step_server: StepServer) -> None:
    a = step_server.json("/a", {}, status=500)
    b = step_server.json("/b", {}, status=500)
    run, steps = await run_to_end(stepflow, {
        "a": {"runtime": http(a)},                                  # function level: 1 retry = 2 attempts
        "b": {"runtime": http(b), "retries": {"attempts": 4}},      # its own
    }, retries=1)
    assert len(step_server.calls["/a"]) == 2
    # the run fails as soon as one step fails; b may be cut short, but never runs more than its own limit
    assert run["status"] == "Failed"
    assert steps["a"]["status"] == "failed" and steps["a"]["attempts"] == 2
    assert {c["ctx"]["max_attempts"] for c in step_server.calls["/b"]} == {4}


async def test_zero_retries_means_one_attempt(stepflow: RunningServer, step_server: StepServer) -> None:
    url = step_server.json("/a", {}, status=500)
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url), "retries": 0}})
    assert run["status"] == "Failed"
    assert len(step_server.calls["/a"]) == 1
    assert "gave up after 1 attempt" in steps["a"]["error"]["message"]


async def test_recovers_when_a_later_attempt_succeeds(stepflow: RunningServer, step_server: StepServer) -> None:
    async def flaky(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        if payload["ctx"]["attempt"] < 2:
            return web.json_response({"status": 500, "body": "not yet"})
        return web.json_response({"status": 200, "body": {"attempt": payload["ctx"]["attempt"]}})

    url = step_server.route("/a", flaky)
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url)}})
    assert run["status"] == "Completed" and run["output"] == {"attempt": 2}
    assert len(step_server.calls["/a"]) == 3
    assert steps["a"]["status"] == "completed" and steps["a"]["attempts"] == 3
    assert steps["a"]["output"] == {"status": 200, "body": {"attempt": 2}}
    assert steps["a"]["error"] is None  # the record shows the outcome, not a stale error


async def test_no_retry_header_stops_retries_of_a_5xx(stepflow: RunningServer, step_server: StepServer) -> None:
    url = step_server.route("/a", raw_answer(b'{"status": 500, "body": "fatal"}', 500,
                                             headers={"X-Inngest-No-Retry": "true"}))
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url)}})
    assert len(step_server.calls["/a"]) == 1
    assert run["status"] == "Failed"
    assert steps["a"]["attempts"] == 1
    assert "X-Inngest-No-Retry" in steps["a"]["error"]["message"]


async def test_retry_after_is_honoured(stepflow_factory: ServerFactory, step_server: StepServer) -> None:
    server = await stepflow_factory(config=EngineConfig(backoff_base=0.01, backoff_max=5.0, poll_interval=0.2))
    arrivals: list[float] = []

    async def busy_then_ok(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        arrivals.append(time.monotonic())
        if payload["ctx"]["attempt"] == 0:
            return web.json_response({"status": 503}, headers={"Retry-After": "1"})
        return web.json_response({"status": 200, "body": "ok"})

    url = step_server.route("/a", busy_then_ok)
    run, steps = await run_to_end(server, {"a": {"runtime": http(url)}})
    assert run["status"] == "Completed" and steps["a"]["attempts"] == 2
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.9  # the backoff base alone would retry after ~10 ms


async def test_connection_refused_is_retried_and_recorded(stepflow: RunningServer) -> None:
    closed = f"http://127.0.0.1:{free_port()}/step"
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(closed), "retries": {"attempts": 3}}})
    assert run["status"] == "Failed"
    step = steps["a"]
    assert step["attempts"] == 3 and step["error"]["code"] == "connection_failed"
    assert "gave up after 3 attempts" in step["error"]["message"]
    assert run["error"]["code"] == "connection_failed" and run["error"]["step_id"] == "a"


@pytest.mark.parametrize("where", ["runtime", "step"])
async def test_timeout_is_retried_and_recorded(stepflow: RunningServer, step_server: StepServer,
                                               where: str) -> None:
    async def slow(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.json_response({"status": 200, "body": "too late"})

    url = step_server.route("/slow", slow)
    step: dict[str, Any] = {"runtime": http(url), "retries": {"attempts": 2}}
    if where == "runtime":
        step["runtime"]["timeout"] = "300ms"
    else:
        step["timeout"] = "300ms"
    run, steps = await run_to_end(stepflow, {"a": step})
    assert len(step_server.calls["/slow"]) == 2
    assert run["status"] == "Failed"  # without the 300 ms timeout, the 2 s answer would have completed it
    assert steps["a"]["error"]["code"] == "timeout" and "within 0.3s" in steps["a"]["error"]["message"]


async def test_non_json_success_is_retried_as_bad_response(stepflow: RunningServer,
                                                           step_server: StepServer) -> None:
    url = step_server.route("/a", raw_answer(b"<html><body>maintenance page</body></html>", 200,
                                             content_type="text/html"))
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url), "retries": {"attempts": 2}}})
    assert len(step_server.calls["/a"]) == 2
    assert run["status"] == "Failed"
    error = steps["a"]["error"]
    assert error["code"] == "bad_response"
    assert "<html><body>maintenance page" in error["message"]  # a snippet of what came back


async def test_malformed_status_is_a_bad_response_not_retried(stepflow: RunningServer,
                                                               step_server: StepServer) -> None:
    """A bare result with a non-HTTP `status` field would be answered the same on every retry: fail now,
    and say how to wrap it."""
    url = step_server.json("/a", {"status": "success", "processedItems": 98})
    run, steps = await run_to_end(stepflow, {"a": {"runtime": http(url), "retries": {"attempts": 2}}})
    assert run["status"] == "Failed"
    assert len(step_server.calls["/a"]) == 1
    assert steps["a"]["error"]["code"] == "bad_response"
    assert "'status' must be an HTTP status code" in steps["a"]["error"]["message"]
    assert '"body": <the result>' in steps["a"]["error"]["message"]


# --- output limit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
async def test_output_over_1_mib_fails_without_retry(stepflow: RunningServer, step_server: StepServer,
                                                     chunked: bool) -> None:
    payload = b'{"status": 200, "body": "' + b"x" * (MiB + 10) + b'"}'

    async def huge(_: dict[str, Any], request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=payload, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(payload), 256 * 1024):
            await response.write(payload[i:i + 256 * 1024])
        await response.write_eof()
        return response

    url = step_server.route("/huge", huge)
    after = step_server.json("/after", {})
    run, steps = await run_to_end(stepflow, {"huge": {"runtime": http(url)},
                                             "after": {"runtime": http(after), "after": ["huge"]}})
    assert len(step_server.calls["/huge"]) == 1  # not retried
    assert "/after" not in step_server.calls
    assert run["status"] == "Failed" and run["output"] is None
    step = steps["huge"]
    assert step["status"] == "failed" and step["attempts"] == 1 and step["output"] is None  # never truncated
    assert step["error"]["code"] == "output_too_large"
    assert step["error"]["limit"] == MiB and step["error"]["size"] > MiB
    assert "1 MiB" in step["error"]["message"]
    assert run["error"]["code"] == "output_too_large"


async def test_output_limit_can_be_raised(stepflow_factory: ServerFactory, step_server: StepServer) -> None:
    server = await stepflow_factory(config=EngineConfig(backoff_base=0.01, backoff_max=0.2, poll_interval=0.2,
                                                        max_output_bytes=2 * MiB))
    text = "y" * (MiB + MiB // 2)
    url = step_server.json("/big", {"status": 200, "body": text})
    run, _ = await run_to_end(server, {"big": {"runtime": http(url)}})
    assert run["status"] == "Completed" and run["output"] == text


# --- signatures -------------------------------------------------------------------------------------------


async def test_requests_are_signed_and_verifiable(stepflow_factory: ServerFactory,
                                                  step_server: StepServer) -> None:
    key = "signkey-test-8ee2262a15e8d3c42d6a840db7af3de2aab08ef632b32a37a687f24b34dba3ff"
    server = await stepflow_factory(config=EngineConfig(backoff_base=0.01, backoff_max=0.2, poll_interval=0.2,
                                                        signing_key=key))
    received: list[tuple[bytes, str]] = []

    async def verifying(_: dict[str, Any], request: web.Request) -> web.StreamResponse:
        body = await request.read()
        header = request.headers.get("X-Inngest-Signature", "")
        received.append((body, header))
        try:
            signing.verify(body, header, key)
        except UnauthorizedError as exc:
            return web.json_response({"status": 401, "body": exc.message})
        return web.json_response({"status": 200, "body": "verified"})

    url = step_server.route("/a", verifying)
    data = {"zeta": 1.0, "alpha": {"b": 2.5, "a": "é\n😀"}, "list": [3.0, -0.0, 10 ** 3]}
    run, _ = await run_to_end(server, {"a": {"runtime": http(url)}}, data=data)
    assert run["status"] == "Completed" and run["output"] == "verified"

    ((body, header),) = received
    fields = dict(part.split("=", 1) for part in header.split("&"))
    assert set(fields) == {"t", "s"}
    t = int(fields["t"])
    assert abs(time.time() - t) < 30
    # the public format: hex HMAC-SHA256 keyed by the key without its `signkey-<env>-` prefix, over body + t
    bare_key = key.removeprefix("signkey-test-").encode()
    assert fields["s"] == hmac.new(bare_key, body + str(t).encode(), hashlib.sha256).hexdigest()
    # Inngest's official SDKs do not hash the bytes received: they parse the body and hash its RFC 8785
    # canonical form. The signature must hold for that too, so the body sent must already be canonical.
    parsed = json.loads(body)
    assert parsed["event"]["data"] == {"zeta": 1, "alpha": {"b": 2.5, "a": "é\n😀"}, "list": [3, 0, 1000]}
    assert sdk_canonical(parsed) == body
    assert fields["s"] == hmac.new(bare_key, sdk_canonical(parsed) + str(t).encode(), hashlib.sha256).hexdigest()

    with pytest.raises(UnauthorizedError, match="does not match"):
        signing.verify(body.replace(b"test/go", b"test/GO"), header, key)
    with pytest.raises(UnauthorizedError, match="does not match"):
        signing.verify(body + b" ", header, key)
    with pytest.raises(UnauthorizedError, match="does not match"):
        signing.verify(body, header, "signkey-test-0000")
    with pytest.raises(UnauthorizedError, match="stale"):
        signing.verify(body, header, key, now=t + 301)
    with pytest.raises(UnauthorizedError, match="missing"):
        signing.verify(body, None, key)
    with pytest.raises(UnauthorizedError, match="malformed"):
        signing.verify(body, "s=abc", key)
    # a fallback key during rotation is accepted
    signing.verify(body, header, ["signkey-test-old", key])


def sdk_canonical(document: Any) -> bytes:
    """RFC 8785 as the official SDKs compute it, for documents whose numbers are integers or simple
    fractions and whose keys are in the Basic Multilingual Plane (what these tests send)."""
    def numbers(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)  # JavaScript writes 1.0 as 1
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        return value
    return json.dumps(numbers(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_canonical_json_is_rfc_8785() -> None:
    document = {"b": [1.0, {"z": None, "a": True}], "a": "x\u2028\x01\"/é", "c": -0.0, "d": 1e16, "e": 0.1,
                "f": 3.2311429614555152e16, "g": 1e-7, "h": 12345, "é": 1, "Z": 2}
    assert canonical_json(document) == (
        b'{"Z":2,"a":"x\xe2\x80\xa8\\u0001\\"/\xc3\xa9","b":[1,{"a":true,"z":null}],"c":0,'
        b'"d":10000000000000000,"e":0.1,"f":32311429614555150,"g":1e-7,"h":12345,"\xc3\xa9":1}')


def test_sign_and_verify_round_trip() -> None:
    key = "signkey-prod-abc123"
    body = b'{"hello": "world"}'
    header = signing.sign(body, key, at=1_700_000_000)
    assert header.startswith("t=1700000000&s=")
    signing.verify(body, header, key, now=1_700_000_100)
    signing.verify(body, header, "abc123", now=1_700_000_100)  # the prefix is not part of the HMAC key
    with pytest.raises(UnauthorizedError, match="stale"):
        signing.verify(body, signing.sign(body, key, at=time.time() - 3600), key)
    with pytest.raises(UnauthorizedError):
        signing.verify(body, header.replace("t=1700000000", "t=1700000001"), key, now=1_700_000_100)


async def test_retry_after_is_honoured_beyond_the_backoff_cap(stepflow: RunningServer,
                                                              step_server: StepServer) -> None:
    arrivals: list[float] = []

    async def busy_then_ok(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        arrivals.append(time.monotonic())
        if payload["ctx"]["attempt"] == 0:
            return web.json_response({"status": 503}, headers={"Retry-After": "1"})
        return web.json_response({"status": 200, "body": "ok"})

    url = step_server.route("/a", busy_then_ok)
    run, _ = await run_to_end(stepflow, {"a": {"runtime": http(url)}})
    assert run["status"] == "Completed" and len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.9


def test_parse_retry_after() -> None:
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 2.5 ") == 2.5
    # a negative or non-finite number is no valid Retry-After: ignored (normal backoff), not "retry at once"
    assert parse_retry_after("-3") is None and parse_retry_after("-5") is None
    assert parse_retry_after("nan") is None and parse_retry_after("inf") is None
    assert parse_retry_after("soon") is None
    # the official Python SDK's RetryAfterError: an ISO-8601 time
    soon = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 30)) + ".000Z"
    assert 25 <= (parse_retry_after(soon) or 0) <= 30
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
