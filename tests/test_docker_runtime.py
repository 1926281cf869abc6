"""The docker runtime against a real Docker engine (scripts/docker-setup installs, starts and builds it).

Images: stepflow-test/busybox:1 (FROM scratch + busybox-static) and stepflow-test/python:3.11.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import stepflow
from stepflow.engine import EngineConfig
from stepflow.errors import DockerUnavailable, StepAttemptError
from stepflow.protocol.answers import StepAnswer, interpret
from stepflow.protocol.contract import StepContext
from stepflow.runtimes.base import Invocation
from stepflow.runtimes.docker import ARGV_LIMIT, DockerRuntime, parse_stdout
from stepflow.runtimes.docker_api import DockerClient

pytestmark = pytest.mark.runs_once  # the docker driver needs no store

BUSYBOX = "stepflow-test/busybox:1"
PYTHON = "stepflow-test/python:3.11"


async def _docker_ready() -> str | None:
    client = DockerClient()
    try:
        await client.version()
        for image in (BUSYBOX, PYTHON):
            if not await client.image_exists(image):
                return f"image {image} missing: run ./scripts/docker-setup"
        return None
    except DockerUnavailable as exc:
        return f"no Docker engine ({exc}); run ./scripts/docker-setup"
    finally:
        await client.close()


@pytest.fixture(autouse=True)
async def docker_required() -> None:
    reason = await _docker_ready()
    if reason is not None:
        if os.environ.get("STEPFLOW_REQUIRE_DOCKER") == "1":
            pytest.fail(reason)  # CI installs Docker: a missing engine there is a failure, not a skip
        pytest.skip(reason)


def sh(script: str, **extra: Any) -> dict[str, Any]:
    """A busybox shell step: the Input is $1."""
    return {"type": "docker", "image": BUSYBOX, "command": ["sh", "-c", script, "step"], **extra}


async def deliver(runtime: Any, inv: Invocation) -> StepAnswer:
    """One attempt as the executor makes it: the driver delivers, the protocol interprets."""
    return interpret(await runtime.invoke(inv), sdk_call=inv.sdk_call, max_output_bytes=inv.max_output_bytes)


def invocation(options: dict[str, Any], payload: bytes = b'{"event":{}}', timeout: float = 30.0,
               limit: int = 1024 * 1024) -> Invocation:
    ctx = StepContext(run_id="01TEST", function_id="f", app_id="a", step_id="s", attempt=0, max_attempts=1)
    return Invocation(input=payload, options={k: v for k, v in options.items() if k != "type"}, ctx=ctx,
                      timeout=timeout, max_output_bytes=limit)


@pytest.fixture
async def runtime() -> Any:
    rt = DockerRuntime()
    await rt.start()
    yield rt
    await rt.close()


async def containers_left() -> list[dict[str, Any]]:
    client = DockerClient()
    try:
        return await client.list_containers("stepflow.run_id=01TEST")
    finally:
        await client.close()


def test_stdout_is_the_last_json_line_else_the_whole() -> None:
    assert parse_stdout(b'starting\n{"status": 200, "body": 1}\nbye\n') == {"status": 200, "body": 1}
    assert parse_stdout(b'{"a": 1}\n{"b": 2}\n') == {"b": 2}
    assert parse_stdout(b'{\n  "pretty": true\n}\n') == {"pretty": True}


async def test_input_is_argv1_and_stdout_is_the_response(runtime: DockerRuntime) -> None:
    answer = await deliver(runtime, invocation(sh('echo "diag" >&2; echo "{\\"status\\":201,\\"body\\":$1}"'),
                                             b'{"event":{"data":{"n":7}}}'))
    assert answer.response.status == 201
    assert answer.response.body == {"event": {"data": {"n": 7}}}
    assert answer.logs == "diag\n"
    assert await containers_left() == []


async def test_exit_codes_without_a_status(runtime: DockerRuntime) -> None:
    ok = await deliver(runtime, invocation(sh('echo "{\\"rows\\": 3}"')))
    assert (ok.response.status, ok.response.body) == (200, {"rows": 3})
    failed = await deliver(runtime, invocation(sh("echo boom >&2; exit 7")))
    assert failed.response.status == 500
    assert failed.response.body["exit_code"] == 7 and "boom" in failed.response.body["stderr"]
    bare = await deliver(runtime, invocation(sh('echo "{\\"partial\\": true}"; exit 2')))
    assert bare.response.status == 500 and bare.response.body["partial"] is True


async def test_garbage_stdout_is_a_bad_response_with_a_snippet(runtime: DockerRuntime) -> None:
    with pytest.raises(StepAttemptError) as info:
        await deliver(runtime, invocation(sh("echo 'this is not json at all'")))
    assert info.value.code == "bad_response" and info.value.retryable
    assert "this is not json" in info.value.message


async def test_output_over_the_limit_is_refused_not_truncated(runtime: DockerRuntime) -> None:
    with pytest.raises(StepAttemptError) as info:
        await deliver(runtime, invocation(sh("head -c 3000 /dev/zero | tr '\\0' x"), limit=2000))
    assert info.value.code == "output_too_large" and not info.value.retryable
    assert info.value.details["size"] == 3000


async def test_timeout_kills_and_removes_the_container(runtime: DockerRuntime) -> None:
    with pytest.raises(StepAttemptError) as info:
        await deliver(runtime, invocation(sh("sleep 30"), timeout=0.5))
    assert info.value.code == "timeout" and info.value.retryable
    assert await containers_left() == []


async def test_oom_kill_is_reported(runtime: DockerRuntime) -> None:
    with pytest.raises(StepAttemptError) as info:
        # python allocates far past the 16 MiB limit
        await deliver(runtime, invocation({"type": "docker", "image": PYTHON, "memory": "16m",
                                         "command": ["python3", "-c", "x = bytearray(200 * 1024 * 1024)"]}))
    assert info.value.code == "oom_killed" and not info.value.retryable


async def test_networking_is_off_unless_asked(runtime: DockerRuntime) -> None:
    answer = await deliver(runtime, invocation(sh('n=$(ls /sys/class/net | wc -l); echo "{\\"ifaces\\": $n}"')))
    assert answer.response.body == {"ifaces": 1}  # only the loopback


async def test_env_and_limits_reach_the_container(runtime: DockerRuntime) -> None:
    answer = await deliver(runtime, invocation(sh('echo "{\\"greeting\\": \\"$GREETING\\"}"', env={"GREETING": "hi"},
                                                memory="64m", cpus=0.5, pids=32)))
    assert answer.response.body == {"greeting": "hi"}


async def test_the_attempts_traceparent_reaches_the_container(runtime: DockerRuntime) -> None:
    """TRACEPARENT (what OpenTelemetry SDKs read): code in the container joins the run's trace."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    inv = invocation(sh('echo "{\\"seen\\": \\"$TRACEPARENT\\"}"'))
    inv = Invocation(input=inv.input, options=inv.options, ctx=StepContext(
        run_id="01TEST", function_id="f", app_id="a", step_id="s", attempt=0, max_attempts=1, traceparent=traceparent),
        timeout=inv.timeout, max_output_bytes=inv.max_output_bytes)
    answer = await deliver(runtime, inv)
    assert answer.response.body == {"seen": traceparent}


async def test_large_input_goes_through_a_file(runtime: DockerRuntime) -> None:
    payload = b'{"event":{"data":{"blob":"' + b"y" * (ARGV_LIMIT + 5000) + b'"}}}'
    script = ('case "$1" in @*) f="${1#@}";; *) exit 9;; esac; '
              'n=$(wc -c < "$f"); echo "{\\"size\\": $n, \\"env\\": \\"$STEPFLOW_INPUT_FILE\\"}"')
    answer = await deliver(runtime, invocation(sh(script), payload))
    assert answer.response.body == {"size": len(payload), "env": "/stepflow/input.json"}


async def test_missing_image_is_not_retried(runtime: DockerRuntime) -> None:
    with pytest.raises(StepAttemptError) as info:
        await deliver(runtime, invocation({"type": "docker", "image": "stepflow-test/does-not-exist:1"}))
    assert info.value.code == "image_not_found" and not info.value.retryable


async def test_unreachable_engine_is_retried() -> None:
    rt = DockerRuntime(host="unix:///tmp/no-docker-here.sock")
    try:
        with pytest.raises(StepAttemptError) as info:
            await rt.invoke(invocation(sh("true")))
        assert info.value.code == "docker_unavailable" and info.value.retryable
    finally:
        await rt.close()


async def test_cancelled_attempt_still_removes_its_container(runtime: DockerRuntime) -> None:
    task = asyncio.create_task(runtime.invoke(invocation(sh("sleep 30"))))
    for _ in range(100):
        if await containers_left():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await containers_left() == []


async def test_workflow_with_a_docker_step_end_to_end(tmp_path: Path) -> None:
    fn = stepflow.workflow("dk", triggers=[stepflow.event("dk/go")], steps={
        "count": {"runtime": sh('echo "{\\"status\\":200,\\"body\\":{\\"chars\\":$(echo "$1" | wc -c)}}"')},
        "flaky": {"runtime": sh("exit 1"), "after": ["count"], "retries": {"attempts": 2}},
    })
    async with stepflow.Engine(store=f"sqlite:///{tmp_path}/dk.db", functions=[fn],
                               config=EngineConfig(backoff_base=0.01, backoff_max=0.05)) as engine:
        ids = await engine.send({"name": "dk/go", "data": {}})
        run = (await engine.get_event_runs(ids[0]))[0]
        ended = await engine.wait_for_run(run["run_id"], 60)
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert ended["status"] == "Failed"
    assert steps["count"]["status"] == "completed" and steps["count"]["output"]["body"]["chars"] > 10
    assert steps["flaky"]["attempts"] == 2 and steps["flaky"]["error"]["status"] == 500


async def test_code_function_step_on_docker(tmp_path: Path) -> None:
    app = stepflow.App("dk")

    @app.function(id="mixed", trigger=stepflow.event("dk/mixed"))
    async def mixed(ctx: stepflow.Context) -> dict[str, Any]:
        local = await ctx.step.run("local", lambda: 20)
        remote = await ctx.step.docker(
            "remote", image=BUSYBOX, data={"add": local},
            command=["sh", "-c", 'echo "{\\"status\\":200,\\"body\\":{\\"seen\\":$(echo "$1" | grep -c add)}}"',
                     "step"])
        return {"local": local, "remote": remote}

    async with stepflow.Engine(app, store=f"sqlite:///{tmp_path}/mixed.db") as engine:
        ids = await engine.send({"name": "dk/mixed", "data": {}})
        assert await engine.wait_for_output(ids[0], timeout=60) == {"local": 20, "remote": {"seen": 1}}


async def test_an_sdk_function_packaged_as_an_image_runs_through_the_protocol(tmp_path: Path) -> None:
    """`stepflow package docker module:app`: the engine drives the function in containers exactly as over
    HTTP — 206 ops on stdout (inline steps, a sleep), replayed call after call, output on completion."""
    from stepflow.kit.docker_image import build_image

    module = tmp_path / "packaged_app.py"
    module.write_text(
        "import stepflow\n"
        "app = stepflow.App('packaged')\n\n"
        "@app.function(id='packaged-sum', trigger=stepflow.event('pk/go'))\n"
        "async def total(ctx):\n"
        "    def double():\n"
        "        ctx.logger.info('doubling %s', ctx.event.data['x'])\n"
        "        return ctx.event.data['x'] * 2\n"
        "    a = await ctx.step.run('a', double)\n"
        "    await ctx.step.sleep('pause', '100ms')\n"
        "    b = await ctx.step.run('b', lambda: a + 1)\n"
        "    return {'total': b}\n")
    await build_image(f"{module}:app", "stepflow-test/packaged-sum:1", base=PYTHON)
    fn = stepflow.parse_function({"id": "packaged-sum", "app_id": "packaged", "triggers": [{"event": "pk/go"}],
                                  "runtime": {"type": "docker", "image": "stepflow-test/packaged-sum:1"}})
    async with stepflow.Engine(store=f"sqlite:///{tmp_path}/pk.db", functions=[fn]) as engine:
        ids = await engine.send({"name": "pk/go", "data": {"x": 20}})
        assert await engine.wait_for_output(ids[0], timeout=120) == {"total": 41}
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    assert [steps[k]["status"] for k in ("a", "pause", "b")] == ["completed"] * 3
    assert steps["a"]["output"] == 40 and steps["b"]["output"] == 41
    assert "INFO doubling 20" in steps["a"]["logs"]  # ctx.logger in the container: kept with its step
