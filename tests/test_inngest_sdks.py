"""End to end: apps written with the OFFICIAL Inngest SDKs run on stepflow unchanged.

Every process is real and on 127.0.0.1: the `stepflow` CLI (`stepflow dev`, keyless, and `stepflow serve`, keyed
with a `signkey-test-…` signing key and an event key), the SDK apps of tests/inngest_apps/ — Python `inngest`
(pinned) under FastAPI+uvicorn, JS `inngest` v3 and v4 (pinned, package-lock.json) under express — and a
stepflow-SDK app for the cross-SDK invokes. Apps are configured only through the SDKs' documented environment
variables (INNGEST_DEV, INNGEST_BASE_URL, INNGEST_SIGNING_KEY, INNGEST_EVENT_KEY, …).

- test_sync_*: each of the three ways an app gets synced (a PUT as the Inngest server sends it, a bare
  `curl -X PUT`, `stepflow dev|serve -u URL`) registers every function, on a fresh server.
- the scenarios (a)–(p) and the cross-SDK invokes, on one server + apps per (sdk, mode), synced with `-u`
  ((n), wrong keys, only against the keyed `stepflow serve`).

Store: SQLite, or PostgreSQL (a fresh schema per server) with STEPFLOW_TEST_BACKEND=postgres, as conftest does.
Setup: ./scripts/inngest-sdk-setup (npm ci in the JS app dirs, pip SDK deps). Without it the tests of a missing
SDK are skipped — except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from inngest_support import (
    APPS,
    FUNCTIONS,
    SDKS,
    STEPFLOW_APP_ID,
    STEPFLOW_BIN,
    STEPFLOW_FUNCTIONS,
    TERMINAL,
    HttpError,
    Stack,
    free_port,
    http,
    http_raw,
    js_ready,
    make_signing_key,
    python_sdk_ready,
    token,
)

BACKEND = os.environ.get("STEPFLOW_TEST_BACKEND", "sqlite")
POSTGRES_URL = os.environ.get("STEPFLOW_TEST_POSTGRES_URL")
MODES = ["dev", "serve"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.timeout(240)


# --- setup ----------------------------------------------------------------------------------------------------


def require_sdk(sdk: str) -> None:
    """Skip (locally) or fail (in CI) when an SDK app's dependencies are not installed."""
    problem = None
    if sdk == "python":
        if not python_sdk_ready():
            problem = "the Python SDK app needs pip packages inngest==0.5.19, fastapi, uvicorn"
    elif shutil.which("node") is None:
        problem = "the JS SDK apps need Node.js (node) on PATH"
    elif not js_ready(sdk):
        problem = f"tests/inngest_apps/{sdk}/node_modules is missing"
    if STEPFLOW_BIN is None:
        problem = "the stepflow command is not installed (pip install -e .)"
    if problem:
        message = f"{problem}: run ./scripts/inngest-sdk-setup"
        if IN_CI:
            pytest.fail(message + " (CI=true: not skipping)")
        pytest.skip(message)


class Db:
    """A fresh store for one server: a SQLite file, or a new migrated schema in the test PostgreSQL."""

    def __init__(self, directory: Path) -> None:
        self.schema: str | None = None
        if BACKEND != "postgres":
            self.url = str(directory / "stepflow.db")
            return
        if not POSTGRES_URL:
            if IN_CI:
                pytest.fail("STEPFLOW_TEST_BACKEND=postgres needs STEPFLOW_TEST_POSTGRES_URL")
            pytest.skip("PostgreSQL tests need STEPFLOW_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1/test)")
        self.schema = "e2e_" + token()
        self.url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={self.schema}"
        done = subprocess.run([str(STEPFLOW_BIN), "migrate", "--db", self.url], capture_output=True, text=True,
                              check=False, timeout=60)
        assert done.returncode == 0, f"stepflow migrate failed: {done.stdout}\n{done.stderr}"

    def drop(self) -> None:
        if self.schema is None or not POSTGRES_URL:
            return
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(POSTGRES_URL.split("?")[0])
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())


def build_stack(sdk: str, mode: str, directory: Path, sync: str, with_stepflow_app: bool) -> tuple[Stack, Db]:
    """Start stepflow (`mode`), the SDK app and optionally the stepflow-SDK app; sync the apps `sync`'s way:
    "stepflow-u" (`stepflow dev|serve -u URL`), "sdk-put" (a PUT with the Inngest server's headers) or "curl"."""
    db = Db(directory)
    stack = Stack(sdk=sdk, mode=mode, log_dir=directory, db=db.url)
    if mode == "serve":
        stack.signing_key = make_signing_key()
        stack.event_key = "evtkey-" + token()
    port = free_port()
    stack.url = f"http://127.0.0.1:{port}"       # the apps need the server's URL before it starts
    try:
        stack.start_sdk_app(free_port())
        if with_stepflow_app:
            stack.start_stepflow_app(free_port())
        urls = [stack.serve_url] + ([stack.sf_app_url] if with_stepflow_app else [])
        stack.start_stepflow(urls if sync == "stepflow-u" else [], port=port)
        if sync != "stepflow-u":
            for url in urls:
                problem = put_sync(stack, url, sync)
                if problem:
                    stack.sync_error = (stack.sync_error or "") + problem + "\n"
        expected = [stack.fn_id(f) for f in FUNCTIONS]
        if with_stepflow_app:
            expected += STEPFLOW_FUNCTIONS
        stack.functions = stack.wait_functions(expected, timeout=10)
        missing = [f for f in expected if f not in stack.functions]
        if missing:
            stack.sync_error = (stack.sync_error or "") + f"not registered after sync ({sync}): {missing}"
    except BaseException:
        print(stack.logs())
        stack.stop()
        db.drop()
        raise
    return stack, db


def put_sync(stack: Stack, url: str, how: str) -> str | None:
    """Sync an app by a PUT to its endpoint; returns a problem, or None."""
    if how == "curl" and shutil.which("curl"):
        done = subprocess.run(["curl", "-sS", "-X", "PUT", url, "-w", "\n%{http_code}"], capture_output=True,
                              text=True, check=False, timeout=60)
        body, _, code = done.stdout.rpartition("\n")
        if done.returncode != 0 or not code.startswith("2"):
            return f"curl -X PUT {url} -> exit {done.returncode}, status {code}: {body} {done.stderr}"
        return None
    headers = {}
    if how == "sdk-put" and url == stack.serve_url:
        # what an Inngest server sends: the server kind the SDK checks against its own mode
        headers["X-Inngest-Server-Kind"] = "dev" if stack.mode == "dev" else "cloud"
    try:
        http("PUT", url, headers=headers, timeout=60)
    except HttpError as exc:
        return str(exc)
    except OSError as exc:
        return f"PUT {url}: {exc}"
    return None


@pytest.fixture(scope="module", params=[(sdk, mode) for sdk in SDKS for mode in MODES],
                ids=[f"{sdk}-{mode}" for sdk in SDKS for mode in MODES])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stepflow server + the SDK app + the stepflow-SDK app per (sdk, mode), synced by `-u`."""
    sdk, mode = request.param
    require_sdk(sdk)
    built, db = build_stack(sdk, mode, tmp_path_factory.mktemp(f"{sdk}-{mode}"), "stepflow-u",
                            with_stepflow_app=True)
    yield built
    built.stop()
    db.drop()


@pytest.fixture
def sf(stack: Stack) -> Iterator[Stack]:
    """The shared stack for one test; the logs it produced are printed when the test fails."""
    offsets = stack.offsets()
    yield stack
    print(f"\n===== logs during this test ({stack.sdk}, {stack.mode}, db={stack.db}) =====")
    print(stack.logs(offsets))


def need(st: Stack, *local_ids: str, stepflow_fns: tuple[str, ...] = ()) -> None:
    """Fail now (rather than time out) when a function the test needs was not registered."""
    missing = [st.fn_id(f) for f in local_ids if st.fn_id(f) not in st.functions]
    missing += [f for f in stepflow_fns if f not in st.functions]
    if missing:
        pytest.fail(f"function(s) {missing} not registered: {st.sync_error or ''}\nregistered: "
                    f"{sorted(st.functions)}")


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def label(st: Stack) -> str:
    return st.sdk


def error_text(run: dict[str, Any]) -> str:
    return json.dumps(run.get("error"))


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --- sync: the three ways -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sdk-put", "curl", "stepflow-u"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sdk", SDKS)
def test_sync(sdk: str, mode: str, how: str, tmp_path: Path) -> None:
    require_sdk(sdk)
    st, db = build_stack(sdk, mode, tmp_path, how, with_stepflow_app=False)
    try:
        listed = st.registered()
        expected = {st.fn_id(f) for f in FUNCTIONS}
        assert st.sync_error is None and expected <= set(listed), (
            f"sync ({how}) failed: {st.sync_error}\nlisted: {sorted(listed)}\n{st.logs()}")
        assert {listed[f]["app_id"] for f in expected} == {st.app_id}
        assert {listed[f]["kind"] for f in expected} == {"code"}
        assert listed[st.fn_id("three-steps")]["triggers"] == [{"event": st.ev("three-steps")}]
        assert listed[st.fn_id("cron-tick")]["triggers"] == [{"cron": "*/2 * * * * *"}]
        # a sync again (a redeploy) changes nothing: same functions, same versions
        problem = put_sync(st, st.serve_url, "curl")
        assert problem is None, problem
        again = st.registered()
        assert {f: again[f]["version"] for f in expected} == {f: listed[f]["version"] for f in expected}
    finally:
        st.stop()
        db.drop()


# --- the scenarios ----------------------------------------------------------------------------------------------


def test_a_three_steps(sf: Stack) -> None:
    need(sf, "three-steps")
    tok = token()
    run = sf.finish(sf.send(sf.ev("three-steps"), {"token": tok, "x": 4}))
    assert run["status"] == "Completed", run
    assert run["function_id"] == sf.fn_id("three-steps")
    assert run["output"] == {"a": 5, "b": 10, "c": 13, "sdk": label(sf)}
    assert {k: v["count"] for k, v in sf.counts(tok).items()} == {"add-one": 1, "double": 1, "add-three": 1}


def test_b_sleep_lasts(sf: Stack) -> None:
    need(sf, "sleeper")
    tok = token()
    run = sf.finish(sf.send(sf.ev("sleeper"), {"token": tok}), timeout=30)
    assert run["status"] == "Completed", run
    out = run["output"]
    assert out["after"] - out["before"] >= 1900, f"the 2 s sleep lasted {out['after'] - out['before']} ms"
    assert out["after"] - out["before"] < 15000
    assert ts(run["ended_at"]) - ts(run["run_started_at"]) >= 1.9
    # memoized: the step before the sleep ran once, not again when the run resumed
    assert sf.count(tok, "before") == 1 and sf.count(tok, "after") == 1


def test_c_wait_for_event_matches_if(sf: Stack) -> None:
    need(sf, "wait-match")
    tok = token()
    order = int(time.time() * 1000) % 1_000_000
    run_id = sf.run_of(sf.send(sf.ev("wait-match"), {"token": tok, "order": order}))["run_id"]
    # send once the run waits: its wait step is listed (or, if steps are not listed, a moment after "ready")
    assert wait_until(lambda: sf.count(tok, "ready") == 1, 15), f"the run never ran 'ready': {sf.get_run(run_id)}"
    wait_until(lambda: sf.step_named(run_id, "wait-approval") is not None, 5)
    sf.send(sf.ev("approved"), {"order": order + 1, "tag": "wrong order"})     # `if` false: ignored
    time.sleep(0.3)
    assert sf.get_run(run_id)["status"] not in ("Completed", "Failed"), "the non-matching event resumed the wait"
    sf.send(sf.ev("approved"), {"order": order, "tag": "right order"})
    run = sf.wait_run(run_id, 20)
    assert run["status"] == "Completed", (run, sf.steps(run_id))
    approval = run["output"]["approval"]
    assert approval is not None, "the wait timed out although a matching event was sent"
    assert approval["name"] == sf.ev("approved")
    assert approval["data"] == {"order": order, "tag": "right order"}


def test_d_wait_for_event_times_out(sf: Stack) -> None:
    need(sf, "wait-timeout")
    run = sf.finish(sf.send(sf.ev("wait-timeout"), {}), timeout=20)
    assert run["status"] == "Completed", run
    assert run["output"] == {"got": None, "timedOut": True}
    assert ts(run["ended_at"]) - ts(run["run_started_at"]) >= 0.9


def test_e_invoke_same_app(sf: Stack) -> None:
    need(sf, "invoke-parent", "invoke-child")
    started = time.time()
    run = sf.finish(sf.send(sf.ev("invoke-parent"), {"n": 21}))
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    assert run["output"] == {"child": {"doubled": 42}}
    children = sf.api("GET", f"/v1/runs?function_id={sf.fn_id('invoke-child')}")["data"]
    mine = [r for r in children if ts(r["run_started_at"]) >= started - 1]
    assert [(r["status"], r["output"]) for r in mine] == [("Completed", {"doubled": 42})]


def test_f_send_event_triggers_function(sf: Stack) -> None:
    need(sf, "send-parent", "send-child")
    tok = token()
    run = sf.finish(sf.send(sf.ev("send-parent"), {"token": tok}))
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    ids = run["output"]["ids"]
    assert isinstance(ids, list) and len(ids) == 1 and all(isinstance(i, str) and i for i in ids), ids
    event = sf.api("GET", f"/v1/events/{ids[0]}")["data"]
    assert event["name"] == sf.ev("sent-by-parent") and event["data"] == {"token": tok}
    child = sf.finish(ids[0])
    assert child["function_id"] == sf.fn_id("send-child")
    assert child["status"] == "Completed" and child["output"] == {"got": tok}
    assert sf.count(tok, "send-child") == 1


def test_g_parallel_steps_run_once_each(sf: Stack) -> None:
    need(sf, "parallel")
    tok = token()
    run = sf.finish(sf.send(sf.ev("parallel"), {"token": tok}))
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    assert run["output"] == {"parts": ["P-A", "P-B", "P-C"], "joined": "P-A+P-B+P-C"}
    assert {k: v["count"] for k, v in sf.counts(tok).items()} == {"p-a": 1, "p-b": 1, "p-c": 1, "p-join": 1}


def test_h_step_error_exhausts_retries(sf: Stack) -> None:
    need(sf, "always-fails")
    tok = token()
    run = sf.finish(sf.send(sf.ev("always-fails"), {"token": tok}))
    assert run["status"] == "Failed", run
    assert "boom: always fails" in error_text(run), run.get("error")
    assert sf.count(tok, "boom") == 2, "retries=1 means 2 attempts"
    step = sf.step_named(run["run_id"], "boom")
    assert step is not None, f"no step record for 'boom': {sf.steps(run['run_id'])}"
    assert step["attempts"] == 2 and step["status"] == "failed", step


def test_i_non_retriable_error(sf: Stack) -> None:
    need(sf, "non-retriable")
    tok = token()
    run = sf.finish(sf.send(sf.ev("non-retriable"), {"token": tok}))
    assert run["status"] == "Failed", run
    assert "nope: not retriable" in error_text(run), run.get("error")
    time.sleep(0.5)                                  # a wrongful retry would come within the 50 ms backoff
    assert sf.count(tok, "refuse") == 1, "a NonRetriableError must not be retried"
    # The Python SDK raises a NonRetriableError out of the step to the function (an error answer, no step op),
    # the JS SDKs report a step error: a step record is optional, but if there is one it shows one attempt.
    step = sf.step_named(run["run_id"], "refuse")
    if step is not None:
        assert step["attempts"] == 1 and step["status"] == "failed", step


def test_j_retry_after_error(sf: Stack) -> None:
    need(sf, "retry-after")
    tok = token()
    run = sf.finish(sf.send(sf.ev("retry-after"), {"token": tok}), timeout=20)
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    assert run["output"] == {"value": "ok on attempt 2"}
    times = sf.counts(tok)["flaky"]["times"]
    assert len(times) == 2
    assert times[1] - times[0] >= 900, f"retried {times[1] - times[0]} ms later; RetryAfterError asked for 1 s"


def test_k_cancel_on_event(sf: Stack) -> None:
    need(sf, "cancellable")
    tok = token()
    run_id = sf.run_of(sf.send(sf.ev("cancellable"), {"token": tok}))["run_id"]
    assert wait_until(lambda: sf.count(tok, "started") == 1, 15), f"never started: {sf.get_run(run_id)}"
    wait_until(lambda: sf.step_named(run_id, "long-nap") is not None, 5)
    sf.send(sf.ev("cancel"), {"token": "someone-else"})              # `if` false: not this run
    time.sleep(0.5)
    assert sf.get_run(run_id)["status"] in ("Running", "Queued"), sf.get_run(run_id)
    sf.send(sf.ev("cancel"), {"token": tok})
    run = sf.wait_run(run_id, 10)
    assert run["status"] == "Cancelled", (run, sf.steps(run_id))
    assert sf.count(tok, "after-nap") == 0


def test_l_cron_trigger(sf: Stack) -> None:
    need(sf, "cron-tick")
    fn = sf.fn_id("cron-tick")
    assert sf.functions[fn]["triggers"] == [{"cron": "*/2 * * * * *"}]

    def completed() -> list[dict[str, Any]]:
        return list(sf.api("GET", f"/v1/runs?function_id={fn}&status=Completed")["data"])

    assert wait_until(lambda: bool(completed()), 12, 0.5), (
        f"no completed cron run within 12 s: {sf.api('GET', f'/v1/runs?function_id={fn}')['data'][:3]}")
    run = completed()[0]
    assert isinstance(run["output"]["tick"], int)
    assert sf.count("cron", "tick") >= 1


def test_m_on_failure_handler(sf: Stack) -> None:
    """retries 0, the function throws: the run fails once, stepflow emits `inngest/function.failed`, and the
    SDK's onFailure / on_failure handler (registered as "<app>-fails-notify-failure") runs on it."""
    need(sf, "fails-notify", "fails-notify-failure")
    tok = token()
    run = sf.finish(sf.send(sf.ev("fails-notify"), {"token": tok}))
    assert run["status"] == "Failed", run
    assert f"exploded on purpose: {tok}" in error_text(run), run.get("error")
    assert sf.count(tok, "fails-notify") == 1, "retries 0 means one attempt"
    handler_fn = sf.fn_id("fails-notify-failure")

    def handler_runs() -> list[dict[str, Any]]:
        rows = sf.api("GET", f"/v1/runs?function_id={handler_fn}&limit=200")["data"]
        return [r for r in rows if (r.get("output") or {}).get("token") == tok]

    assert wait_until(lambda: any(r["status"] in TERMINAL for r in handler_runs()), 15, 0.2), (
        f"no ended run of {handler_fn} for this failure within 15 s (on-failure count "
        f"{sf.count(tok, 'on-failure')}); its runs: {sf.api('GET', f'/v1/runs?function_id={handler_fn}')['data'][:5]}")
    [handler] = handler_runs()
    assert handler["status"] == "Completed", (handler, sf.steps(handler["run_id"]))
    out = handler["output"]
    assert out["event_name"] == "inngest/function.failed", out
    assert out["function_id"] == sf.fn_id("fails-notify"), out
    assert out["run_id"] == run["run_id"], out
    assert f"exploded on purpose: {tok}" in str(out["message"]), out
    assert out["original_event"] == sf.ev("fails-notify"), out
    assert sf.count(tok, "on-failure") == 1
    # the event stepflow emitted, as the handler's run shows it
    if handler.get("event_id"):
        event = sf.api("GET", f"/v1/events/{handler['event_id']}")["data"]
        assert event["name"] == "inngest/function.failed"
        assert event["data"]["function_id"] == sf.fn_id("fails-notify")
        assert event["data"]["run_id"] == run["run_id"]
        assert event["data"]["event"]["data"] == {"token": tok}


WRONG_SIGNING_KEY_TEXT = "the signing key is not valid for this server"
WRONG_EVENT_KEY_TEXT = "unknown event key"


def test_n_wrong_signing_key_sync_is_refused(sf: Stack) -> None:
    """An app started with a wrong INNGEST_SIGNING_KEY syncs (PUT): stepflow refuses its /fn/register, nothing is
    registered, and the SDK passes stepflow's message on without crashing."""
    if sf.mode != "serve":
        pytest.skip("keys are checked by the keyed `stepflow serve` only")
    bad_app = f"{sf.app_id}-badkey"
    proc, url = sf.start_sdk_app_variant("badkey", bad_app, INNGEST_SIGNING_KEY=make_signing_key())
    try:
        status, body = http_raw("PUT", url, timeout=60)
        time.sleep(0.3)                                  # let the app write its log
        app_log = proc.tail()
        alive = proc.popen.poll() is None
    finally:
        proc.stop()
    answer = f"PUT {url} -> {status}: {body}"
    print(answer)
    assert WRONG_SIGNING_KEY_TEXT in body, answer
    if sf.sdk == "python":
        # the Python SDK answers the PUT 200 with the server's body, whatever the server answered
        assert status == 200, answer
        assert WRONG_SIGNING_KEY_TEXT in str(json.loads(body).get("error")), answer
    else:
        assert status >= 400, answer
    registered = sf.registered()
    assert not [f for f in registered if f.startswith(bad_app + "-")], f"registered with a wrong key: {answer}"
    assert sf.fn_id("three-steps") in registered
    assert alive, f"the app exited after the refused sync:\n{app_log}"
    assert "ValidationError" not in app_log and "ValidationError" not in body, app_log


def test_n_wrong_event_key_send_raises_the_sdk_error(sf: Stack) -> None:
    """inngest.send / client.send with a wrong INNGEST_EVENT_KEY, from inside the SDK's own client: the SDK
    raises its normal error with stepflow's message (Python: SendEventsError, not a pydantic ValidationError)."""
    if sf.mode != "serve":
        pytest.skip("keys are checked by the keyed `stepflow serve` only")
    name = sf.ev("send-test")

    def send_test(key: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"key": key, "name": name})
        return dict(http("GET", f"{sf.app_url}/send-test?{query}", timeout=60))

    good = send_test(sf.event_key)                       # the right key: sent
    assert good["ok"] is True, good
    assert isinstance(good["ids"], list) and len(good["ids"]) == 1, good
    event = sf.api("GET", f"/v1/events/{good['ids'][0]}")["data"]
    assert event["name"] == name and event["data"] == {"via": "send-test"}
    bad = send_test("wrong-" + token())
    print(f"send with a wrong event key: {bad}")
    assert bad["ok"] is False, f"an event was accepted with a wrong event key: {bad}"
    assert WRONG_EVENT_KEY_TEXT in bad["message"], bad
    if sf.sdk == "python":
        assert bad["error_class"] == "SendEventsError", bad
        assert "ValidationError" not in bad["mro"], bad
    else:
        # the JS SDKs' send error: "Inngest API Error: <status> <the server's error>"
        assert bad["is_error"] is True and bad["message"].startswith("Inngest API Error: 401"), bad
    assert "ValidationError" not in bad["message"], bad


def test_o_sleep_until(sf: Stack) -> None:
    need(sf, "sleep-until")
    tok = token()
    sent = int(time.time() * 1000)
    until = sent + 2000
    run = sf.finish(sf.send(sf.ev("sleep-until"), {"token": tok, "until": until}), timeout=30)
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    out = run["output"]
    assert out["until"] == until
    assert out["after"] >= until - 50, f"woke {until - out['after']} ms before the time asked for"
    assert out["after"] - sent >= 1900, f"sleepUntil 2 s ahead lasted {out['after'] - sent} ms"
    assert out["after"] - sent < 15000
    assert ts(run["ended_at"]) * 1000 >= until - 50
    assert sf.count(tok, "after") == 1


def test_p_step_fails_once_then_succeeds(sf: Stack) -> None:
    need(sf, "flaky-once")
    tok = token()
    run = sf.finish(sf.send(sf.ev("flaky-once"), {"token": tok}))
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    assert run["output"] == {"value": "ok on attempt 2"}
    assert sf.count(tok, "flaky") == 2
    step = sf.step_named(run["run_id"], "flaky")
    assert step is not None, f"no step record for 'flaky': {sf.steps(run['run_id'])}"
    assert step["attempts"] == 2 and step["status"] == "completed", step
    assert step["output"] == "ok on attempt 2", step


def test_q_flow_control_from_the_sdk_holds(sf: Stack) -> None:
    """The SDK's `concurrency` (keyed by CEL) and `throttle` options, synced: the runs of one token execute their
    step one at a time."""
    need(sf, "one-at-a-time")
    listed = sf.registered()[sf.fn_id("one-at-a-time")]
    assert listed["flow_control"]["concurrency"] == [{"limit": 1, "key": "event.data.token"}], listed
    assert listed["flow_control"]["throttle"]["limit"] == 100 and listed["flow_control"]["throttle"]["period"] == 1
    tok = token()
    events = [sf.send(sf.ev("one-at-a-time"), {"token": tok, "i": i}) for i in range(3)]
    runs = [sf.finish(e, timeout=30) for e in events]
    assert {r["status"] for r in runs} == {"Completed"}, runs
    counts = sf.counts(tok)
    starts, ends = sorted(counts["start"]["times"]), sorted(counts["end"]["times"])
    assert len(starts) == len(ends) == 3
    # never two at once: each step started after the previous one ended
    assert all(starts[i + 1] >= ends[i] for i in range(2)), (starts, ends)


def test_r_batch_events_from_the_sdk(sf: Stack) -> None:
    """The SDK's `batchEvents`, synced: three events make one run, whose function sees all three."""
    need(sf, "batched")
    ids = [sf.send(sf.ev("batched"), {"n": n}) for n in range(3)]
    runs = [sf.finish(event_id, timeout=30) for event_id in ids]
    assert len({r["run_id"] for r in runs}) == 1, runs
    assert runs[0]["status"] == "Completed" and runs[0]["output"] == {"ns": [0, 1, 2]}, runs[0]


def test_cross_inngest_sdk_invokes_stepflow_function(sf: Stack) -> None:
    need(sf, "cross-invoke-stepflow", stepflow_fns=("double",))
    run = sf.finish(sf.send(sf.ev("cross-invoke"), {"n": 7}))
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    assert run["output"] == {"via": label(sf), "result": {"doubled": 14, "by": "stepflow"}}


def test_cross_stepflow_sdk_invokes_inngest_function(sf: Stack) -> None:
    need(sf, "invoke-child", stepflow_fns=("call-inngest",))
    run = sf.finish(sf.send(f"{STEPFLOW_APP_ID}/call-inngest", {"target": sf.fn_id("invoke-child"), "n": 5}))
    assert run["function_id"] == "call-inngest"
    assert run["status"] == "Completed", (run, sf.steps(run["run_id"]))
    assert run["output"] == {"via": "stepflow", "result": {"doubled": 10}}


def test_apps_are_the_pinned_sdk_versions() -> None:
    """The committed manifests pin exact versions (no ranges), and the lockfiles agree."""
    for sdk, major in (("js_v3", "3."), ("js_v4", "4.")):
        manifest = json.loads((APPS / sdk / "package.json").read_text())
        pinned = manifest["dependencies"]["inngest"]
        assert pinned.startswith(major) and pinned[0].isdigit(), pinned
        lock = json.loads((APPS / sdk / "package-lock.json").read_text())
        assert lock["packages"]["node_modules/inngest"]["version"] == pinned
