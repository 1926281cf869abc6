"""SDK memoization: each step runs once per run however often the function replays, and values come back
with their types (dataclasses, Pydantic models, tuples) on replay."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
from test_sdk_support import Calls, embedded, first_run

import stepflow
from stepflow import Context, StepError

# --- memoization -----------------------------------------------------------------------------------------


async def test_each_step_runs_once_although_the_function_is_replayed(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()
    replays = Calls()

    def step(name: str, value: int) -> int:
        calls.hit(name)
        return value

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> int:
        replays.hit("body")
        a = await ctx.step.run("a", step, "a", 1)
        await ctx.step.sleep("s1", "50ms")
        b = await ctx.step.run("b", step, "b", a + 1)
        await ctx.step.sleep("s2", "50ms")
        c = await ctx.step.run("c", step, "c", b + 1)
        await ctx.step.sleep("s3", "50ms")
        return a + b + c

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == 6
    assert dict(calls) == {"a": 1, "b": 1, "c": 1}
    assert replays["body"] == 4   # called once per sleep boundary, plus the first call


async def test_failing_step_runs_again_only_until_it_succeeds(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()

    def first() -> str:
        calls.hit("first")
        return "ok"

    def flaky() -> str:
        if calls.hit("flaky") < 3:
            raise ConnectionError(f"attempt {calls['flaky']} failed")
        return "finally"

    def last(value: str) -> str:
        calls.hit("last")
        return value + "!"

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=4)
    async def f(ctx: Context) -> str:
        await ctx.step.run("first", first)
        value = await ctx.step.run("flaky", flaky)
        return await ctx.step.run("last", last, value)

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == "finally!"
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert dict(calls) == {"first": 1, "flaky": 3, "last": 1}
    assert steps["flaky"]["status"] == "completed" and steps["flaky"]["attempts"] == 3
    assert steps["first"]["attempts"] == 1 and steps["last"]["attempts"] == 1


@dataclass
class Point:
    x: int
    y: int


@dataclass
class Segment:
    start: Point
    end: Point
    label: str


class User(pydantic.BaseModel):
    id: int
    email: str
    tags: list[str] = []


def make_segment() -> Segment:
    return Segment(Point(0, 0), Point(3, 4), "diagonal")


async def make_user() -> User:
    return User(id=7, email="a@example.com", tags=["x"])


def make_pair() -> tuple[Point, int]:
    return Point(1, 2), 5


def make_points() -> list[Point]:
    return [Point(1, 1), Point(2, 2)]


async def test_typed_values_come_back_typed_on_replay(tmp_path: Path) -> None:
    """Dataclasses (nested), Pydantic models, tuples and lists of dataclasses are typed back from the
    callable's return annotation or `output_type=` when the function replays (the sleep forces a replay)."""
    app = stepflow.App("steps")
    observed: dict[str, Any] = {}

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> dict[str, Any]:
        segment = await ctx.step.run("segment", make_segment)
        user = await ctx.step.run("user", make_user)
        pair = await ctx.step.run("pair", make_pair)
        points = await ctx.step.run("points", make_points)
        untyped = await ctx.step.run("untyped", lambda: Point(9, 9), output_type=Point)
        model = await ctx.step.run("model", lambda: {"id": 1, "email": "b@example.com"}, output_type=User)
        plain = await ctx.step.run("plain", lambda: Point(5, 6))   # no annotation: stays JSON
        await ctx.step.sleep("force-replay", "50ms")
        # only a replay gets here: every value above now comes from the stored JSON
        observed.update(segment=segment, user=user, pair=pair, points=points, untyped=untyped, model=model,
                        plain=plain)
        return {"length": ((segment.end.x - segment.start.x) ** 2 + (segment.end.y - segment.start.y) ** 2) ** 0.5,
                "email": user.email, "pair_x": pair[0].x}

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == {"length": 5.0, "email": "a@example.com",
                                                                     "pair_x": 1}
        run = (await engine.get_event_runs(ids[0]))[0]
        stored = {s["step_id"]: s["output"] for s in await engine.get_run_steps(run["run_id"])}
    seg = observed["segment"]
    assert isinstance(seg, Segment) and isinstance(seg.start, Point) and isinstance(seg.end, Point)
    assert seg == Segment(Point(0, 0), Point(3, 4), "diagonal")
    assert isinstance(observed["user"], User) and observed["user"] == User(id=7, email="a@example.com", tags=["x"])
    assert isinstance(observed["pair"], tuple) and observed["pair"] == (Point(1, 2), 5)
    assert isinstance(observed["pair"][0], Point)
    assert observed["points"] == [Point(1, 1), Point(2, 2)] and all(isinstance(p, Point) for p in observed["points"])
    assert isinstance(observed["untyped"], Point) and observed["untyped"] == Point(9, 9)
    assert isinstance(observed["model"], User) and observed["model"].email == "b@example.com"
    assert observed["plain"] == {"x": 5, "y": 6}
    # what is stored is plain JSON
    assert stored["segment"] == {"start": {"x": 0, "y": 0}, "end": {"x": 3, "y": 4}, "label": "diagonal"}
    assert stored["user"] == {"id": 7, "email": "a@example.com", "tags": ["x"]}
    assert stored["pair"] == [{"x": 1, "y": 2}, 5]


async def test_step_returning_an_unserializable_value_fails_the_step(tmp_path: Path) -> None:
    app = stepflow.App("steps")
    calls = Calls()

    def bad() -> object:
        calls.hit("bad")
        return object()

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=1)
    async def f(ctx: Context) -> str:
        try:
            await ctx.step.run("bad", bad)
        except StepError as exc:
            return exc.error_name
        return "no error"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    # the value cannot be stored: the step fails for good (no retry: it would return the same kind of value),
    # and the function gets a StepError it can catch, instead of the whole call failing and being retried
    assert run["status"] == "Completed", run.get("error")
    assert run["output"] == "NonRetriableError"
    assert calls["bad"] == 1
    assert steps["bad"]["status"] == "failed" and "not JSON serializable" in steps["bad"]["error"]["message"]


async def test_nested_steps_are_refused(tmp_path: Path) -> None:
    app = stepflow.App("steps")

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=0)
    async def f(ctx: Context) -> str:
        async def outer() -> str:
            return await ctx.step.run("inner", lambda: "x")

        try:
            return await ctx.step.run("outer", outer)
        except StepError as exc:
            return f"{exc.error_name}: {exc.error_message}"

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        out = await engine.wait_for_output(ids[0], timeout=10)
    assert out.startswith("InvalidStepUsage") and "nested" in out


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_step_args_and_kwargs_are_passed(tmp_path: Path, kind: str) -> None:
    app = stepflow.App("steps")

    def sync_fn(a: int, b: int, *, c: int) -> list[int]:
        return [a, b, c]

    async def async_fn(a: int, b: int, *, c: int) -> list[int]:
        return [a, b, c]

    @app.function(id="f", trigger=stepflow.event("t/go"))
    async def f(ctx: Context) -> list[int]:
        return await ctx.step.run("s", sync_fn if kind == "sync" else async_fn, 1, 2, c=3)

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        assert await engine.wait_for_output(ids[0], timeout=10) == [1, 2, 3]


async def test_a_step_started_beside_a_running_step_is_not_taken_for_a_nested_one(tmp_path: Path) -> None:
    """`asyncio.gather(step, helper)`: the helper reaches its own step while the first one is executing.
    That is a parallel step, not a nested one."""
    app = stepflow.App("steps")
    calls = Calls()

    async def slow() -> str:
        calls.hit("slow")
        await asyncio.sleep(0.2)
        return "slow"

    @app.function(id="f", trigger=stepflow.event("t/go"), retries=0)
    async def f(ctx: Context) -> list[str]:
        async def helper() -> str:
            await asyncio.sleep(0.05)   # reaches its step after the first one has started
            return str(await ctx.step.run("quick", lambda: calls.hit("quick") and "quick"))

        return list(await asyncio.gather(ctx.step.run("slow", slow), helper()))

    async with embedded(tmp_path, app) as engine:
        ids = await engine.send({"name": "t/go"})
        run = await first_run(engine, ids[0])
    assert run["status"] == "Completed", run.get("error")
    assert run["output"] == ["slow", "quick"]
    assert dict(calls) == {"slow": 1, "quick": 1}
