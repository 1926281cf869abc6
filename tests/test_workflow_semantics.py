"""Workflow semantics (the planner): roots, `if` over event/steps/response, skipping, joins, branch merges,
durable `wait`, the run's output, and expressions that fail at run time."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from conftest import RunningServer, StepServer, workflow_config


def http(url: str) -> dict[str, Any]:
    return {"type": "http", "url": url}


def answer(step_server: StepServer, path: str, body: Any, delay: float = 0.0) -> str:
    """A step answering 200 with `body` (after `delay` seconds)."""
    async def handler(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"status": 200, "body": body})
    return step_server.route(path, handler)


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def start(server: RunningServer, steps: dict[str, Any], **extra: Any) -> None:
    await server.register(workflow_config(steps, **extra))


async def run_event(server: RunningServer, data: dict[str, Any] | None = None,
                    timeout: float = 15) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    ids = await server.client.send({"name": "test/go", "data": data or {}})
    (run,) = await server.client.get_event_runs(ids[0])
    run = await server.client.wait_for_run(run["run_id"], timeout=timeout)
    steps = await server.client.get_run_steps(run["run_id"])
    return run, {s["step_id"]: s for s in steps}


def calls_of(step_server: StepServer, path: str, run_id: str) -> list[dict[str, Any]]:
    return [c for c in step_server.calls.get(path, []) if c["ctx"]["run_id"] == run_id]


# --- roots -----------------------------------------------------------------------------------------------


async def test_steps_without_after_run_right_after_the_trigger_in_parallel(stepflow: RunningServer,
                                                                          step_server: StepServer) -> None:
    arrived: list[str] = []
    both_here = asyncio.Event()

    def barrier(name: str) -> Any:
        async def handler(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
            arrived.append(name)
            if len(arrived) == 2:
                both_here.set()
            try:  # only returns "together" if the other root is executing at the same time
                await asyncio.wait_for(both_here.wait(), 5)
                together = True
            except TimeoutError:
                together = False
            return web.json_response({"status": 200, "body": {"together": together}})
        return handler

    a = step_server.route("/a", barrier("a"))
    b = step_server.route("/b", barrier("b"))
    await start(stepflow, {"a": {"runtime": http(a)}, "b": {"runtime": http(b)}})
    run, steps = await run_event(stepflow)
    assert run["status"] == "Completed"
    assert sorted(arrived) == ["a", "b"]
    assert steps["a"]["output"]["body"] == {"together": True}
    assert steps["b"]["output"]["body"] == {"together": True}
    # both roots were scheduled when the event arrived, before either finished
    assert steps["a"]["scheduled_at"] == steps["b"]["scheduled_at"]
    assert ts(steps["a"]["started_at"]) < ts(steps["b"]["ended_at"])
    assert ts(steps["b"]["started_at"]) < ts(steps["a"]["ended_at"])


# --- if, skip, join ----------------------------------------------------------------------------------------


async def test_if_over_the_event_skips_the_child_and_its_descendants(stepflow: RunningServer,
                                                                     step_server: StepServer) -> None:
    a = answer(step_server, "/a", {"n": 1})
    b = answer(step_server, "/b", "b ran")
    c = answer(step_server, "/c", "c ran")
    d = answer(step_server, "/d", "d ran")
    await start(stepflow, {
        "a": {"runtime": http(a)},
        "b": {"runtime": http(b), "after": [{"step": "a", "if": "event.data.go == true"}]},
        "c": {"runtime": http(c), "after": ["b"]},         # only b can start it
        "d": {"runtime": http(d), "after": ["a", "b"]},    # a alone can start it
    })

    run, steps = await run_event(stepflow, {"go": True})
    assert run["status"] == "Completed"
    assert {sid: s["status"] for sid, s in steps.items()} == {
        "a": "completed", "b": "completed", "c": "completed", "d": "completed"}
    assert len(calls_of(step_server, "/d", run["run_id"])) == 1
    # after both (c, which b also started, may or may not have finished by then)
    assert {"a", "b"} <= set(calls_of(step_server, "/d", run["run_id"])[0]["steps"])

    run, steps = await run_event(stepflow, {"go": False})
    assert run["status"] == "Completed"
    assert {sid: s["status"] for sid, s in steps.items()} == {
        "a": "completed", "b": "skipped", "c": "skipped", "d": "completed"}
    assert calls_of(step_server, "/b", run["run_id"]) == []
    assert calls_of(step_server, "/c", run["run_id"]) == []
    assert len(calls_of(step_server, "/d", run["run_id"])) == 1
    for sid in ("b", "c"):
        assert steps[sid]["attempts"] == 0 and steps[sid]["output"] is None
        assert steps[sid]["error"]["code"] == "skipped"
    assert run["output"] == "d ran"


async def test_if_over_steps_and_response(stepflow: RunningServer, step_server: StepServer) -> None:
    a = answer(step_server, "/a", {"count": 7, "kind": "csv"})
    big = answer(step_server, "/big", "big")
    small = answer(step_server, "/small", "small")
    csv = answer(step_server, "/csv", "csv")
    json_ = answer(step_server, "/json", "json")
    await start(stepflow, {
        "a": {"runtime": http(a)},
        "big": {"runtime": http(big), "after": [{"step": "a", "if": "steps.a.body.count > 5"}]},
        "small": {"runtime": http(small), "after": [{"step": "a", "if": "steps.a.body.count <= 5"}]},
        "csv": {"runtime": http(csv),
                "after": [{"step": "a", "if": "response.status == 200 && response.body.kind == 'csv'"}]},
        "json": {"runtime": http(json_), "after": [{"step": "a", "if": "response.body.kind == 'json'"}]},
    })
    run, steps = await run_event(stepflow)
    assert run["status"] == "Completed"
    assert {sid: s["status"] for sid, s in steps.items()} == {
        "a": "completed", "big": "completed", "small": "skipped", "csv": "completed", "json": "skipped"}


async def test_join_runs_once_after_both_parents(stepflow: RunningServer, step_server: StepServer) -> None:
    a = answer(step_server, "/a", "slow a", delay=0.4)
    b = answer(step_server, "/b", "quick b")
    c = answer(step_server, "/c", "joined")
    await start(stepflow, {"a": {"runtime": http(a)}, "b": {"runtime": http(b)},
                           "c": {"runtime": http(c), "after": ["a", "b"]}})
    run, steps = await run_event(stepflow)
    assert run["status"] == "Completed" and run["output"] == "joined"
    (call,) = step_server.calls["/c"]
    assert call["steps"] == {"a": {"status": 200, "body": "slow a"}, "b": {"status": 200, "body": "quick b"}}
    assert ts(steps["c"]["started_at"]) >= ts(steps["a"]["ended_at"])
    assert ts(steps["c"]["started_at"]) >= ts(steps["b"]["ended_at"])


@pytest.mark.parametrize("go, ran, skipped", [(True, "yes", "no"), (False, "no", "yes")])
async def test_branch_merge_runs_once(stepflow: RunningServer, step_server: StepServer, go: bool, ran: str,
                                      skipped: str) -> None:
    x = answer(step_server, "/x", {"go": go})
    yes = answer(step_server, "/yes", "yes branch")
    no = answer(step_server, "/no", "no branch")
    merge = answer(step_server, "/merge", "merged")
    await start(stepflow, {
        "x": {"runtime": http(x)},
        "yes": {"runtime": http(yes), "after": [{"step": "x", "if": "response.body.go"}]},
        "no": {"runtime": http(no), "after": [{"step": "x", "if": "!response.body.go"}]},
        "merge": {"runtime": http(merge), "after": ["yes", "no"]},
    })
    run, steps = await run_event(stepflow)
    assert run["status"] == "Completed" and run["output"] == "merged"
    assert steps[ran]["status"] == "completed" and steps[skipped]["status"] == "skipped"
    assert f"/{skipped}" not in step_server.calls
    (call,) = step_server.calls["/merge"]
    assert set(call["steps"]) == {"x", ran}


async def test_all_edges_false_skips_everything_below_and_the_run_completes(stepflow: RunningServer,
                                                                           step_server: StepServer) -> None:
    a = answer(step_server, "/a", "only a")
    b = answer(step_server, "/b", "b")
    c = answer(step_server, "/c", "c")
    await start(stepflow, {"a": {"runtime": http(a)},
                           "b": {"runtime": http(b), "after": [{"step": "a", "if": "false"}]},
                           "c": {"runtime": http(c), "after": [{"step": "b", "wait": "1h"}]}})
    run, steps = await run_event(stepflow, timeout=5)
    assert run["status"] == "Completed" and run["output"] == "only a"
    assert steps["b"]["status"] == "skipped" and steps["c"]["status"] == "skipped"  # no 1 h wait either


# --- wait ----------------------------------------------------------------------------------------------


async def test_wait_delays_the_child(stepflow: RunningServer, step_server: StepServer) -> None:
    a = answer(step_server, "/a", "first")
    b = answer(step_server, "/b", "later")
    await start(stepflow, {"a": {"runtime": http(a)},
                           "b": {"runtime": http(b), "after": [{"step": "a", "wait": "1s"}]}})
    run, steps = await run_event(stepflow)
    assert run["status"] == "Completed" and run["output"] == "later"
    parent_end = ts(steps["a"]["ended_at"])
    assert ts(steps["b"]["scheduled_at"]) >= parent_end + 0.99
    assert ts(steps["b"]["started_at"]) >= parent_end + 0.95


async def test_wait_and_condition_on_one_edge(stepflow: RunningServer, step_server: StepServer) -> None:
    """The issue's example edge: `if` and `wait` together."""
    parse = answer(step_server, "/parse", {"processedItems": 98, "failedItems": 2})

    async def report(payload: dict[str, Any], _: web.Request) -> web.StreamResponse:
        return web.json_response({"status": 200, "body": {"status": "success",
                                                          **payload["steps"]["parse"]["body"]}})

    url = step_server.route("/report", report)
    await start(stepflow, {
        "parse": {"runtime": http(parse)},
        "report": {"runtime": http(url), "retries": {"attempts": 3},
                   "after": [{"step": "parse", "if": "steps.parse.body.processedItems > 0", "wait": "1s"}]},
    })
    run, steps = await run_event(stepflow)
    assert run["output"] == {"status": "success", "processedItems": 98, "failedItems": 2}
    assert ts(steps["report"]["started_at"]) >= ts(steps["parse"]["ended_at"]) + 0.95


# --- output -------------------------------------------------------------------------------------------


async def test_output_is_the_body_of_the_last_step_that_ran(stepflow: RunningServer,
                                                            step_server: StepServer) -> None:
    a = answer(step_server, "/a", {"from": "a"})
    slow = answer(step_server, "/slow", {"from": "slow"}, delay=0.3)
    quick = answer(step_server, "/quick", {"from": "quick"})
    never = answer(step_server, "/never", {"from": "never"})
    # "slow" is declared first but finishes last; "never" is declared last but is skipped
    await start(stepflow, {"a": {"runtime": http(a)},
                           "slow": {"runtime": http(slow), "after": ["a"]},
                           "quick": {"runtime": http(quick), "after": ["a"]},
                           "never": {"runtime": http(never), "after": [{"step": "quick", "if": "false"}]}})
    run, _ = await run_event(stepflow)
    assert run["status"] == "Completed"
    assert run["output"] == {"from": "slow"}


async def test_output_of_the_step_marked_output(stepflow: RunningServer, step_server: StepServer) -> None:
    a = answer(step_server, "/a", {"from": "a"})
    b = answer(step_server, "/b", {"result": 42})
    c = answer(step_server, "/c", {"from": "c, a clean-up step"})
    await start(stepflow, {"a": {"runtime": http(a)},
                           "b": {"runtime": http(b), "after": ["a"], "output": True},
                           "c": {"runtime": http(c), "after": ["b"]}})
    run, steps = await run_event(stepflow)
    assert steps["c"]["status"] == "completed"
    assert run["output"] == {"result": 42}


# --- expressions failing at run time --------------------------------------------------------------------


@pytest.mark.parametrize("condition, problem", [
    ("steps.a.body.missing > 0", "missing"),
    ("event.data.nothing == 'x'", "nothing"),
    ("1 + 2", "not a boolean"),
])
async def test_an_if_that_errors_at_run_time_fails_the_run(stepflow: RunningServer, step_server: StepServer,
                                                           condition: str, problem: str) -> None:
    a = answer(step_server, "/a", {"present": 1})
    b = answer(step_server, "/b", "b")
    await start(stepflow, {"a": {"runtime": http(a)},
                           "b": {"runtime": http(b), "after": [{"step": "a", "if": condition}]}})
    run, steps = await run_event(stepflow)
    assert run["status"] == "Failed"
    error = run["error"]
    assert error["code"] == "expression_error"
    assert error["step_id"] == "b"
    assert "'b'" in error["message"] and problem in error["message"] and condition in error["message"]
    assert "/b" not in step_server.calls
    assert steps["a"]["status"] == "completed"
