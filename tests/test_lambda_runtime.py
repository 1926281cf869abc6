"""The lambda runtime against the local Lambda (`stepflow lambda serve`): real awslambdaric workers, real
SigV4-signed Invoke calls, real zips from `stepflow package lambda`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import stepflow
from stepflow.engine import EngineConfig
from stepflow.errors import StepAttemptError
from stepflow.kit.lambda_zip import build_zip
from stepflow.lambda_local import LocalLambda
from stepflow.protocol.answers import interpret
from stepflow.protocol.contract import StepContext
from stepflow.runtimes.aws_lambda import MAX_SYNC_PAYLOAD, LambdaRuntime
from stepflow.runtimes.base import Invocation

pytestmark = pytest.mark.runs_once  # the lambda driver needs no store

HANDLERS = textwrap.dedent('''
    import json, os, time

    def handler(event, context):
        kind = event.get("kind") or (event.get("event") or {}).get("data", {}).get("kind")
        if kind == "raise":
            raise ValueError("bad thing")
        if kind == "sleep":
            time.sleep(5)
        if kind == "crash":
            os._exit(3)
        if kind == "big":
            return {"status": 200, "body": "x" * (2 * 1024 * 1024)}
        if kind == "503":
            return {"statusCode": 503, "body": json.dumps({"retry": True})}
        if kind == "400":
            return {"status": 400, "body": {"error": "bad input"}}
        if kind == "string-body":
            return {"statusCode": 200, "body": json.dumps({"decoded": True})}
        return {"status": 200, "body": {"pid": os.getpid(), "seen": event}}
''')


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # the driver signs with whatever the standard chain finds; these are the local Lambda's credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLOCAL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA", "STEPFLOW_LAMBDA_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def score_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A step packaged once with `stepflow package lambda`'s code (it copies ~15 MB of dependencies)."""
    root = tmp_path_factory.mktemp("score")
    step = root / "score.py"
    step.write_text("def score(payload):\n"
                    "    return {'status': 200, 'body': {'score': payload['event']['data']['n'] * 2}}\n")
    return build_zip(f"{step}:score", root / "score.zip")


@pytest.fixture
async def local_lambda(tmp_path: Path, score_zip: Path) -> AsyncIterator[str]:
    functions = tmp_path / "functions"
    (functions / "raw").mkdir(parents=True)
    (functions / "raw" / "lambda_function.py").write_text(HANDLERS)
    (functions / "raw" / "stepflow-lambda.json").write_text('{"handler": "lambda_function.handler", "timeout": 1.5}')
    (functions / "broken").mkdir()
    (functions / "broken" / "lambda_function.py").write_text("import no_such_module\n")
    (functions / "score.zip").symlink_to(score_zip)
    local = LocalLambda(functions, max_workers=2)
    runner = web.AppRunner(local.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def invocation(endpoint: str, function: str, document: Any, **options: Any) -> Invocation:
    import orjson

    ctx = StepContext(run_id="r", function_id="f", app_id="a", step_id="s", attempt=0, max_attempts=1)
    return Invocation(input=orjson.dumps(document), options={"function": function, "endpoint_url": endpoint,
                                                              **options}, ctx=ctx, timeout=30,
                      max_output_bytes=1024 * 1024)


async def call(endpoint: str, function: str, document: Any, **options: Any) -> Any:
    runtime = LambdaRuntime()
    try:
        inv = invocation(endpoint, function, document, **options)
        return interpret(await runtime.invoke(inv), sdk_call=inv.sdk_call, max_output_bytes=inv.max_output_bytes)
    finally:
        await runtime.close()


async def test_success_and_warm_reuse(local_lambda: str) -> None:
    first = await call(local_lambda, "raw", {"event": {"data": {"n": 1}}})
    second = await call(local_lambda, "raw", {"event": {"data": {"n": 2}}})
    assert first.response.status == 200 and first.response.body["seen"] == {"event": {"data": {"n": 1}}}
    assert first.response.body["pid"] == second.response.body["pid"]  # the same warm process


async def test_status_code_and_string_body_are_read(local_lambda: str) -> None:
    answer = await call(local_lambda, "raw", {"kind": "string-body"})
    assert (answer.response.status, answer.response.body) == (200, {"decoded": True})
    assert (await call(local_lambda, "raw", {"kind": "503"})).response.status == 503
    assert (await call(local_lambda, "raw", {"kind": "400"})).response.status == 400


@pytest.mark.parametrize(("kind", "error_type"), [("raise", "ValueError"), ("crash", "Runtime.ExitError"),
                                                  ("sleep", "Sandbox.Timedout")])
async def test_function_errors_are_500s(local_lambda: str, kind: str, error_type: str) -> None:
    answer = await call(local_lambda, "raw", {"kind": kind})
    assert answer.response.status == 500
    assert answer.response.body["errorType"] == error_type


async def test_import_error_is_reported_like_aws(local_lambda: str) -> None:
    answer = await call(local_lambda, "broken", {})
    assert answer.response.status == 500
    assert answer.response.body["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module" in answer.response.body["errorMessage"]


async def test_oversize_response_is_output_too_large(local_lambda: str) -> None:
    with pytest.raises(StepAttemptError) as info:
        await call(local_lambda, "raw", {"kind": "big"})
    assert info.value.code == "output_too_large" and not info.value.retryable


async def test_unknown_function_is_a_service_4xx_not_retried(local_lambda: str) -> None:
    with pytest.raises(StepAttemptError) as info:
        await call(local_lambda, "no-such-function", {})
    assert info.value.code == "lambda_error" and not info.value.retryable
    assert "ResourceNotFoundException" in info.value.message


async def test_oversize_input_is_refused_before_sending(local_lambda: str) -> None:
    with pytest.raises(StepAttemptError) as info:
        await call(local_lambda, "raw", {"blob": "y" * MAX_SYNC_PAYLOAD})
    assert info.value.code == "input_too_large" and not info.value.retryable


async def test_requests_are_sigv4_signed_and_throttling_is_retried() -> None:
    seen: list[dict[str, str]] = []

    async def throttle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"Type": "User", "message": "Rate exceeded"}, status=429,
                                 headers={"x-amzn-ErrorType": "TooManyRequestsException"})

    async def boom(request: web.Request) -> web.Response:
        return web.json_response({"message": "internal"}, status=500,
                                 headers={"x-amzn-ErrorType": "ServiceException"})

    app = web.Application()
    app.router.add_post("/2015-03-31/functions/throttled/invocations", throttle)
    app.router.add_post("/2015-03-31/functions/boom/invocations", boom)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        with pytest.raises(StepAttemptError) as info:
            await call(endpoint, "throttled", {}, qualifier="live")
        assert info.value.code == "throttled" and info.value.retryable
        with pytest.raises(StepAttemptError) as info:
            await call(endpoint, "boom", {})
        assert info.value.code == "lambda_service_error" and info.value.retryable
    finally:
        await runner.cleanup()
    auth = seen[0]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDLOCAL/")
    assert "/eu-west-1/lambda/aws4_request" in auth and "X-Amz-Date" in seen[0]


async def test_retries_follow_the_contract_end_to_end(local_lambda: str, tmp_path: Path) -> None:
    fn = stepflow.workflow("lam", triggers=[stepflow.event("lam/go")], retries=2, steps={
        "flaky": {"runtime": {"type": "lambda", "function": "raw", "endpoint_url": local_lambda}},
    })
    async with stepflow.Engine(store=f"sqlite:///{tmp_path}/l.db", functions=[fn],
                               config=EngineConfig(backoff_base=0.01, backoff_max=0.05)) as engine:
        ids = await engine.send({"name": "lam/go", "data": {"kind": "raise"}})
        run = (await engine.get_event_runs(ids[0]))[0]
        ended = await engine.wait_for_run(run["run_id"], 60)
        steps = await engine.get_run_steps(run["run_id"])
    assert ended["status"] == "Failed", ended
    assert steps[0]["attempts"] == 3, steps[0]["error"]
    assert steps[0]["error"]["body"]["errorType"] == "ValueError", steps


async def test_packaged_step_and_sdk_function_run_through_the_local_lambda(local_lambda: str,
                                                                          tmp_path: Path) -> None:
    answer = await call(local_lambda, "score", {"event": {"data": {"n": 21}}})
    assert (answer.response.status, answer.response.body) == (200, {"score": 42})


def test_the_zip_imports_cleanly_in_a_fresh_python(tmp_path: Path) -> None:
    app_file = tmp_path / "imports_app.py"
    app_file.write_text(textwrap.dedent('''
        import stepflow
        app = stepflow.App("imports")

        @app.function(id="count", trigger=stepflow.event("imports/x"))
        async def count(ctx):
            def n():
                ctx.logger.info("counting %d rows", len(ctx.event.data["rows"]))
                return len(ctx.event.data["rows"])
            return await ctx.step.run("n", n)
    '''))
    archive = build_zip(f"{app_file}:app", tmp_path / "dist" / "imports.zip")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(unpacked)
    # -I -S: no site-packages, no user paths — only the standard library and what the zip holds
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); import stepflow_handler; "
              "print(json.dumps(stepflow_handler.handler({'event': {'name': 'imports/x', 'data': {'rows': [1, 2]}}, "
              "'steps': {}, 'ctx': {'run_id': 'r', 'function_id': 'count'}}, None)))")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(unpacked)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    response = json.loads(result.stdout.strip().splitlines()[-1])
    assert response["status"] == 206 and response["body"][0]["op"] == "StepRun"
    assert "INFO counting 2 rows" in response["body"][0]["logs"]  # ctx.logger in a Lambda: it travels in the op
    assert response["body"][-1] == {"op": "RunComplete", "data": 2}
