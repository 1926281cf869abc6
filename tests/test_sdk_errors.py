"""Errors in SDK functions (issue 3, item 3, and the 1 MiB output limit), run embedded on a real SQLite file:
NonRetriableError, RetryAfterError, StepError after the last attempt, uncaught errors failing the run with
name, message and stack, and a step output over the limit."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from test_sdk_support import Calls, embedded, first_run

import stepflow
from stepflow import Context, NonRetriableError, RetryAfterError, StepError

MiB = 1024 * 1024


async def test_non_retriable_error_in_a_step_is_not_retried_and_can_be_caught(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    calls = Calls()

    def charge(card: str) -> str:
        calls.hit("charge")
        raise NonRetriableError(f"card {card} was declined")

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=4)
    async def f(ctx: Context) -> dict[str, Any]:
        try:
            await ctx.step.run("charge", charge, "4242")
        except StepError as exc:
            return {"step": exc.step_id, "name": exc.error_name, "message": exc.error_message,
                    "has_stack": "charge" in (exc.stack or "")}
        return {"caught": False}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = await engine.get_run_steps(run["run_id"])
    assert out == {"step": "charge", "name": "NonRetriableError", "message": "card 4242 was declined",
                   "has_stack": True}
    assert calls["charge"] == 1
    assert [(s["step_id"], s["status"], s["attempts"]) for s in steps] == [("charge", "failed", 1)]
    assert steps[0]["error"]["name"] == "NonRetriableError"


async def test_uncaught_step_failure_fails_the_run_with_name_message_and_stack(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    bodies = Calls()

    def parse_invoice(number: int) -> None:
        raise NonRetriableError(f"invoice {number} is malformed")

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=3)
    async def f(ctx: Context) -> str:
        bodies.hit("f")
        await ctx.step.run("parse", parse_invoice, 12)
        return "unreachable"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Failed" and run["output"] is None
    error = run["error"]
    assert error["name"] == "StepError"
    assert "parse" in error["message"] and "invoice 12 is malformed" in error["message"]
    assert error["cause"] == {"name": "NonRetriableError", "message": "invoice 12 is malformed"}
    assert error["step_id"] == "parse"
    # the stack is the step's own: where the original error was raised
    assert "parse_invoice" in error["stack"] and "NonRetriableError" in error["stack"]
    # a failed step that the function does not catch fails the run now: the function is not retried
    assert bodies["f"] == 2   # the call that ran the step, and the replay that met its StepError


async def test_uncaught_error_in_the_function_body_is_retried_then_fails_the_run(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    bodies = Calls()

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=2)
    async def f(ctx: Context) -> str:
        bodies.hit("f")
        raise ValueError(f"bad total for order {ctx.event.data['order']}")

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go", "data": {"order": 31}})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Failed"
    error = run["error"]
    assert error["name"] == "ValueError"
    assert error["message"].startswith("bad total for order 31")
    assert "gave up after 3 attempts" in error["message"]
    assert "Traceback" in error["stack"] and "in f" in error["stack"] and "raise ValueError" in error["stack"]
    assert bodies["f"] == 3   # retries=2: three attempts


async def test_non_retriable_error_in_the_function_body_fails_at_once(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    bodies = Calls()

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=4)
    async def f(ctx: Context) -> str:
        bodies.hit("f")
        raise NonRetriableError("the account is closed")

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Failed"
    assert run["error"]["name"] == "NonRetriableError" and run["error"]["message"] == "the account is closed"
    assert bodies["f"] == 1


async def test_step_failing_its_last_attempt_raises_step_error_the_function_can_catch(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    calls = Calls()

    def fetch_rate() -> float:
        calls.hit("fetch")
        raise ConnectionError("rates service unreachable")

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=2)
    async def f(ctx: Context) -> dict[str, Any]:
        try:
            rate = await ctx.step.run("fetch-rate", fetch_rate)
        except StepError as exc:
            fallback = await ctx.step.run("fallback", lambda: 1.0)
            return {"rate": fallback, "name": exc.error_name, "message": exc.error_message}
        return {"rate": rate}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert calls["fetch"] == 3   # retries=2: three attempts, then StepError
    assert out["rate"] == 1.0 and out["name"] == "ConnectionError"
    assert out["message"].startswith("rates service unreachable") and "gave up after 3 attempts" in out["message"]
    assert steps["fetch-rate"]["status"] == "failed" and steps["fetch-rate"]["attempts"] == 3
    assert steps["fallback"]["status"] == "completed" and steps["fallback"]["attempts"] == 1


async def test_a_step_after_a_retried_step_keeps_all_its_attempts(tmp_path: Path) -> None:
    """Attempts are counted per step: a step reached in the call that retried an earlier step starts at
    attempt 1, so it gets its full `retries`."""
    app = stepflow.App("errors")
    calls = Calls()

    def flaky() -> str:
        if calls.hit("flaky") < 3:
            raise ConnectionError("not yet")
        return "ok"

    def broken() -> str:
        calls.hit("broken")
        raise ConnectionError("always down")

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=3)
    async def f(ctx: Context) -> str:
        await ctx.step.run("flaky", flaky)
        try:
            await ctx.step.run("broken", broken)
        except StepError:
            return "gave up"
        return "unreachable"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "gave up"
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert dict(calls) == {"flaky": 3, "broken": 4}
    assert steps["flaky"]["attempts"] == 3 and steps["broken"]["attempts"] == 4


async def test_retry_after_error_in_a_step_is_honoured(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    attempts: list[float] = []

    def rate_limited() -> str:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RetryAfterError("429 from the API", "700ms")
        return "done"

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> str:
        return await ctx.step.run("call-api", rate_limited)

    # backoff is 10-100 ms here: only the error's own delay can explain a 0.7 s gap
    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "done"
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.68


async def test_retry_after_error_with_a_datetime(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    attempts: list[float] = []

    def rate_limited() -> str:
        attempts.append(time.time())
        if len(attempts) == 1:
            raise RetryAfterError("come back later", datetime.now(UTC) + timedelta(milliseconds=600))
        return "done"

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> str:
        return await ctx.step.run("call-api", rate_limited)

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "done"
    assert attempts[1] - attempts[0] >= 0.55


async def test_retry_after_error_in_the_function_body_is_honoured(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    attempts: list[float] = []

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> int:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RetryAfterError("warming up", "1400ms")
        return ctx.attempt

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == 1   # ctx.attempt of the second call
    # Retry-After carries whole seconds: 1.4 s must become 2 s, never 1 s (earlier than asked)
    assert attempts[1] - attempts[0] >= 1.38


async def test_step_output_over_1_mib_fails_the_step_without_retry(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    calls = Calls()

    def export() -> str:
        calls.hit("export")
        return "x" * (MiB + 10)

    def after(size: int) -> int:
        calls.hit("after")
        return size

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=3)
    async def f(ctx: Context) -> dict[str, Any]:
        try:
            data = await ctx.step.run("export", export)
        except StepError as exc:
            return {"caught": exc.error_name, "code": exc.details.get("code"), "message": exc.error_message}
        # must never get here: the function may not go on with a value the engine did not store
        return {"size": await ctx.step.run("after", after, len(data))}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert out["caught"] == "OutputTooLarge" and out["code"] == "output_too_large"
    assert str(MiB) in out["message"]
    assert dict(calls) == {"export": 1}   # not retried; the next step never ran
    assert set(steps) == {"export"}
    assert steps["export"]["status"] == "failed" and steps["export"]["error"]["code"] == "output_too_large"


async def test_step_output_just_under_1_mib_is_stored(tmp_path: Path) -> None:
    app = stepflow.App("errors")

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> int:
        data = await ctx.step.run("export", lambda: "x" * (MiB - 100))
        await ctx.step.sleep("replay", "10ms")
        return len(data)

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == MiB - 100


async def test_function_output_over_1_mib_fails_the_run(tmp_path: Path) -> None:
    app = stepflow.App("errors")

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> str:
        return "y" * (MiB + 1)

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Failed" and run["error"]["code"] == "output_too_large"


async def test_engine_limit_below_the_sdk_default_still_fails_the_step(tmp_path: Path) -> None:
    """With the engine's limit set lower (10 kB) the engine refuses the step even if the SDK let it through:
    the run must not complete with a value that was not stored — the function meets a StepError instead."""
    app = stepflow.App("errors")
    calls = Calls()

    def export() -> str:
        calls.hit("export")
        return "x" * 20_000

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=3)
    async def f(ctx: Context) -> dict[str, Any]:
        try:
            data = await ctx.step.run("export", export)
        except StepError as exc:
            return {"caught": exc.error_name, "code": exc.details.get("code")}
        return {"size": await ctx.step.run("after", lambda: len(data))}

    async with embedded(tmp_path, app, max_output_bytes=10_000) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert out == {"caught": "OutputTooLarge", "code": "output_too_large"}
    assert calls["export"] == 1
    assert set(steps) == {"export"} and steps["export"]["error"]["limit"] == 10_000


async def test_function_returning_an_unserializable_value_fails_without_retry(tmp_path: Path) -> None:
    app = stepflow.App("errors")
    bodies = Calls()

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=3)
    async def f(ctx: Context) -> object:
        bodies.hit("f")
        return object()

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Failed"
    assert run["error"]["name"] == "TypeError" and "not JSON serializable" in run["error"]["message"]
    assert bodies["f"] == 1


async def test_function_body_keeps_its_retries_after_a_step_was_retried(tmp_path: Path) -> None:
    """The body's own retries are not spent by the retries of a step that ran before it failed."""
    app = stepflow.App("errors")
    calls = Calls()

    def flaky() -> str:
        if calls.hit("flaky") < 3:
            raise ConnectionError("not yet")
        return "ok"

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=2)
    async def f(ctx: Context) -> str:
        await ctx.step.run("flaky", flaky)
        if calls.hit("body-after-step") < 3:
            raise RuntimeError("body hiccup")
        return "done"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Completed", run.get("error")
    assert calls["flaky"] == 3 and calls["body-after-step"] == 3
