"""ctx.logger lines are kept with the step they were written in (each attempt's, bounded to 64 KiB with the
truncation marked) and returned by `/v1/runs/{id}/steps` — for an SDK app in-process and served over HTTP; a
replayed call writes nothing twice."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from conftest import RunningServer, StepServer, workflow_config
from test_sdk_http import Serve, serve  # noqa: F401 - the fixture, found by name
from test_sdk_support import embedded, first_run

import stepflow
from stepflow.sdk.serve import ServeOptions


def logging_app() -> stepflow.App:
    app = stepflow.App("logged")
    attempts = {"flaky": 0}

    @app.function(id="chatty", trigger=stepflow.event("logs/go"), retries=2)
    async def chatty(ctx: stepflow.Context) -> int:
        ctx.logger.info("starting for order %s", ctx.event.data["order"])   # outside any step: kept with the next

        async def fetch() -> int:
            ctx.logger.info("fetching order %s", ctx.event.data["order"])
            return 42

        async def flaky() -> str:
            attempts["flaky"] += 1
            ctx.logger.warning("flaky attempt %d", attempts["flaky"])
            if attempts["flaky"] == 1:
                raise RuntimeError("first attempt fails")
            return "ok"

        async def loud() -> int:
            for n in range(2000):
                ctx.logger.info("line %d %s", n, "x" * 40)   # ~100 KiB: more than a step keeps
            return 1

        total = await ctx.step.run("fetch", fetch)
        await ctx.step.sleep("nap", "10ms")                  # a new call, replaying `fetch` (and its line)
        await ctx.step.run("flaky", flaky)
        await ctx.step.run("loud", loud)
        return total

    return app


def assert_kept(steps: list[dict[str, object]]) -> None:
    logs = {str(s["step_id"]): str(s.get("logs") or "") for s in steps}
    assert "INFO starting for order 7" in logs["fetch"] and "INFO fetching order 7" in logs["fetch"]
    assert logs["fetch"].count("fetching order") == 1 and logs["fetch"].count("starting") == 1
    # the stored attempt is the last one: its lines, not the failed one's
    assert "WARNING flaky attempt 2" in logs["flaky"] and "attempt 1" not in logs["flaky"]
    assert "fetching" not in logs["flaky"]  # the replay of `fetch` in later calls wrote nothing
    assert "INFO line 0 " in logs["loud"]  # the first lines are kept, the excess is cut and said so
    assert logs["loud"].rstrip().endswith("[… truncated: the step wrote more than 64 KiB of log lines]")
    assert len(logs["loud"]) <= 64 * 1024 and "line 1999" not in logs["loud"]
    assert logs.get("nap", "") == ""


async def test_ctx_logger_lines_are_kept_with_their_step_in_process(tmp_path: Path) -> None:
    async with embedded(tmp_path, logging_app()) as engine:
        [event_id] = await engine.send({"name": "logs/go", "data": {"order": 7}})
        run = await first_run(engine, event_id, timeout=20)
        assert run["status"] == "Completed", run
        assert_kept(await engine.get_run_steps(run["run_id"]))


async def test_ctx_logger_lines_travel_back_from_an_app_served_over_http(stepflow: RunningServer,
                                                                        serve: Serve) -> None:
    url = await serve(logging_app(), ServeOptions(dev=True, base_url=stepflow.url))
    async with aiohttp.ClientSession() as http, http.put(url) as resp:   # sync
        assert resp.status == 200, await resp.text()
    [event_id] = await stepflow.client.send({"name": "logs/go", "data": {"order": 7}})
    [run] = await stepflow.client.get_event_runs(event_id)
    done = await stepflow.client.wait_for_run(run["run_id"], timeout=20)
    assert done["status"] == "Completed", done
    assert_kept(await stepflow.client.get_run_steps(run["run_id"]))


async def test_a_plain_steps_response_can_carry_its_logs(stepflow: RunningServer, step_server: StepServer) -> None:
    """The step contract's `logs`: any runtime's Response may say what the step wrote; it is kept with the step,
    not in its stored result."""
    answer = {"status": 200, "body": {"rows": 3}, "logs": "read 3 rows\nskipped 0\n"}
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": step_server.json(
        "/logged", answer)}}}, id="plain", event="logs/plain"))
    [event_id] = await stepflow.client.send({"name": "logs/plain", "data": {}})
    [run] = await stepflow.client.get_event_runs(event_id)
    done = await stepflow.client.wait_for_run(run["run_id"], timeout=20)
    assert done["output"] == {"rows": 3}
    [step] = await stepflow.client.get_run_steps(run["run_id"])
    assert step["logs"] == "read 3 rows\nskipped 0\n" and step["output"] == {"status": 200, "body": {"rows": 3}}
