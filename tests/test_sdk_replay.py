"""Replays (issue 3, items 7 and 8), embedded on a real SQLite file: a function whose code changed during a run
fails with an error naming both step ids instead of misbehaving silently; `ctx.logger` writes each line once
per run although the function is called once per step boundary."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import logging
import uuid
from pathlib import Path

import pytest
from test_sdk_support import Calls, embedded, first_run, wait_for

import stepflow
from stepflow import Context


def version_1(calls: Calls) -> stepflow.App:
    app = stepflow.App("billing")

    @app.function(id="invoice", trigger=stepflow.event("t/go"))
    async def invoice(ctx: Context) -> str:
        await ctx.step.run("a", lambda: calls.hit("a"))
        await ctx.step.sleep("pause", "600ms")
        await ctx.step.run("b", lambda: calls.hit("b"))
        return "v1"

    return app


def version_2(calls: Calls, first_step: str) -> stepflow.App:
    app = stepflow.App("billing")

    @app.function(id="invoice", trigger=stepflow.event("t/go"))
    async def invoice(ctx: Context) -> str:
        await ctx.step.run(first_step, lambda: calls.hit(first_step))
        await ctx.step.sleep("pause", "600ms")
        await ctx.step.run("b", lambda: calls.hit("b"))
        return "v2"

    return app


async def start_v1_and_wait_for_the_sleep(engine: stepflow.Engine) -> str:
    ids = await engine.send({"name": "t/go"})

    async def sleeping() -> bool:
        runs = await engine.get_event_runs(ids[0])
        return bool(runs) and any(s["step_id"] == "pause" for s in await engine.get_run_steps(runs[0]["run_id"]))

    await wait_for(sleeping, what="step a memoized and the run asleep")
    return ids[0]


async def test_code_change_mid_run_after_a_restart_fails_naming_both_steps(tmp_path: Path) -> None:
    """The process is redeployed during the sleep with code whose first step is now "a2"."""
    calls = Calls()
    async with embedded(tmp_path, version_1(calls)) as engine:
        event_id = await start_v1_and_wait_for_the_sleep(engine)
    assert dict(calls) == {"a": 1}
    async with embedded(tmp_path, version_2(calls, "a2")) as engine:   # same database, new code
        run = await first_run(engine, event_id)
        steps = await engine.get_run_steps(run["run_id"])
    assert run["status"] == "Failed"
    error = run["error"]
    assert error["name"] == "NonDeterminismError"
    assert "'a2'" in error["message"] and "'a'" in error["message"]
    assert "new ids" in error["message"]   # and says how to change code safely
    assert dict(calls) == {"a": 1}   # neither a2 nor b ran: nothing misbehaved
    assert [s["step_id"] for s in steps] == ["a", "pause"]


async def test_code_change_mid_run_in_a_live_engine(tmp_path: Path) -> None:
    """The registered App is swapped while a run sleeps; the replay meets "a2" where "a" was recorded."""
    calls = Calls()
    async with embedded(tmp_path, version_1(calls)) as engine:
        event_id = await start_v1_and_wait_for_the_sleep(engine)
        await engine.add_app(version_2(calls, "a2"))
        run = await first_run(engine, event_id)
    assert run["status"] == "Failed"
    assert "'a2'" in run["error"]["message"] and "'a'" in run["error"]["message"]
    assert dict(calls) == {"a": 1}


async def test_code_change_that_keeps_the_recorded_steps_is_fine(tmp_path: Path) -> None:
    """Changing what comes after the recorded steps (here only the return value) is safe."""
    calls = Calls()
    async with embedded(tmp_path, version_1(calls)) as engine:
        event_id = await start_v1_and_wait_for_the_sleep(engine)
    async with embedded(tmp_path, version_2(calls, "a")) as engine:
        run = await first_run(engine, event_id)
    assert run["status"] == "Completed" and run["output"] == "v2"
    assert dict(calls) == {"a": 1, "b": 1}


def logging_app() -> stepflow.App:
    app = stepflow.App("logs")

    @app.function(id="chatty", trigger=stepflow.event("t/go"))
    async def chatty(ctx: Context) -> int:
        ctx.logger.info("start %s", ctx.event.data["n"])
        a = await ctx.step.run("one", lambda: 1)
        ctx.logger.info("after one: %d", a)
        await ctx.step.sleep("s1", "50ms")
        b = await ctx.step.run("two", lambda: 2)
        ctx.logger.warning("after two: %d", b)
        await ctx.step.sleep("s2", "50ms")
        c = await ctx.step.run("three", lambda: 3)
        ctx.logger.info("after three: %d", c)
        await ctx.step.sleep("s3", "50ms")
        ctx.logger.info("done")
        return a + b + c

    return app


async def test_logger_does_not_repeat_lines_on_replay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stepflow.function.chatty")
    async with embedded(tmp_path, logging_app()) as engine:
        ids = await engine.send({"name": "t/go", "data": {"n": 42}})
        assert await engine.wait_for_output(ids[0], timeout=10) == 6
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "stepflow.function.chatty"]
    assert lines == [("INFO", "start 42"), ("INFO", "after one: 1"), ("WARNING", "after two: 2"),
                     ("INFO", "after three: 3"), ("INFO", "done")]
    # the log record points at the user's code, not at the SDK
    assert all(r.pathname == __file__ for r in caplog.records if r.name == "stepflow.function.chatty")


async def test_logger_lines_once_per_run_with_a_plain_handler(tmp_path: Path) -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("stepflow.function.chatty")
    handler = Collect(level=logging.INFO)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with embedded(tmp_path, logging_app()) as engine:
            first = await engine.send({"name": "t/go", "data": {"n": 1}})
            second = await engine.send({"name": "t/go", "data": {"n": 2}})
            await engine.wait_for_output(first[0], timeout=10)
            await engine.wait_for_output(second[0], timeout=10)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert sorted(records) == sorted(["start 1", "start 2"] + 2 * ["after one: 1", "after two: 2",
                                                                   "after three: 3", "done"])


async def test_logger_does_not_repeat_lines_around_parallel_steps(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Parallel steps each run in a call of their own (targeted at that step); those calls replay the code
    before the gather and must not log it again. A line logged inside a step's callable is written once."""
    caplog.set_level(logging.INFO, logger="stepflow.function.fan")
    app = stepflow.App("logs")
    calls = Calls()

    @app.function(id="fan", trigger=stepflow.event("t/go"))
    async def fan(ctx: Context) -> list[str]:
        ctx.logger.info("fanning out")

        async def work(name: str) -> str:
            calls.hit(name)
            ctx.logger.info("working on %s", name)
            return name

        parts = await asyncio.gather(*(ctx.step.run(f"w-{n}", work, n) for n in "abc"))
        ctx.logger.info("gathered %s", ",".join(parts))
        return list(parts)

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == ["a", "b", "c"]
    lines = [r.getMessage() for r in caplog.records if r.name == "stepflow.function.fan"]
    assert dict(calls) == {"a": 1, "b": 1, "c": 1}
    assert lines[0] == "fanning out" and lines[-1] == "gathered a,b,c"
    assert sorted(lines) == sorted(["fanning out", "working on a", "working on b", "working on c",
                                    "gathered a,b,c"])


# --- typed replay and values JSON cannot hold ------------------------------------------------------------


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


@dataclasses.dataclass
class Account:
    id: uuid.UUID
    tier: Tier
    opened: datetime.datetime
    balance: decimal.Decimal


async def test_dataclass_fields_are_typed_back_after_a_replay(tmp_path: Path) -> None:
    """The function resumes after a sleep, in a new call: the step's dataclass comes back from JSON with its
    datetime, enum, UUID and decimal fields as those types, not as strings."""
    app = stepflow.App("bank")
    opened = datetime.datetime(2026, 3, 1, 9, 30, tzinfo=datetime.UTC)
    account_id = uuid.UUID("12345678-1234-5678-1234-567812345678")

    def load() -> Account:
        return Account(id=account_id, tier=Tier.GOLD, opened=opened, balance=decimal.Decimal("10.25"))

    @app.function(id="review", trigger=stepflow.event("t/go"))
    async def review(ctx: Context) -> dict[str, str]:
        account = await ctx.step.run("load", load)
        await ctx.step.sleep("pause", "10ms")  # what follows runs in a later call, replaying "load" from JSON
        return {"id": type(account.id).__name__, "tier": type(account.tier).__name__,
                "opened": type(account.opened).__name__, "balance": type(account.balance).__name__,
                "year": str(account.opened.year), "is_gold": str(account.tier is Tier.GOLD)}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Completed", run
    assert run["output"] == {"id": "UUID", "tier": "Tier", "opened": "datetime", "balance": "Decimal",
                             "year": "2026", "is_gold": "True"}


async def test_a_step_returning_nan_or_infinity_fails_naming_the_value(tmp_path: Path) -> None:
    app = stepflow.App("stats")

    def ratio() -> dict[str, list[float]]:
        return {"ratios": [1.0, float("nan")]}

    @app.function(id="stats", trigger=stepflow.event("t/go"), retries=3)
    async def stats(ctx: Context) -> str:
        try:
            await ctx.step.run("ratio", ratio)
        except stepflow.StepError as exc:
            return exc.error_message
        return "stored"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
        steps = await engine.get_run_steps(run["run_id"])
    assert run["status"] == "Completed"
    assert "the value['ratios'][1] (nan) is not a finite number" in run["output"]
    assert [(s["step_id"], s["status"], s["attempts"]) for s in steps if s["step_id"] == "ratio"] == [
        ("ratio", "failed", 1)]  # not retried: the same value would come back
