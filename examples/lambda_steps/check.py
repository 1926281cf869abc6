"""Lambda steps, end to end without AWS:

1. `stepflow package lambda score.py:score` builds the Lambda zip of a Python step;
2. `stepflow lambda serve` (a subprocess on a free port) runs it through AWS's runtime interface client;
3. an embedded engine (stepflow.Engine) runs the workflow score_order.json — an in-process step, then the
   Lambda step, its runtime pointed at the local Lambda with `endpoint_url` — and a code function
   (orders_app.py) whose `ctx.step.lambda_("score", ...)` reaches the same Lambda through
   $STEPFLOW_LAMBDA_ENDPOINT. Each once with an order that scores and once with an empty order, which the
   Lambda answers with a 400 (not retried).

    .venv/bin/python examples/lambda_steps/check.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # local_steps (the in-process step) and orders_app (the SDK function)
STEPFLOW = Path(sys.executable).with_name("stepflow")

# The driver signs every Invoke with whatever botocore's standard chain finds. The local Lambda checks no
# signature, so fake credentials do; the config files are pointed away so that a developer's real
# ~/.aws profile is neither needed nor used.
os.environ.update({"AWS_ACCESS_KEY_ID": "AKIDLOCALEXAMPLE", "AWS_SECRET_ACCESS_KEY": "local-secret",
                   "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA"):
    os.environ.pop(name, None)

# imported once the environment is set (botocore reads it when the driver first signs)
from orders_app import app

import stepflow

ORDER = {"order": "A-100", "items": [{"sku": "lamp", "qty": 3, "price": 180}, {"sku": "bulb", "qty": 10, "price": 3}]}
EMPTY = {"order": "A-101", "items": []}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_lambda(functions: Path, workdir: Path) -> Iterator[str]:
    """`stepflow lambda serve FUNCTIONS` on a free port; stopped (with its warm workers) on the way out."""
    port = free_port()
    log_path = workdir / "lambda-serve.log"
    with open(log_path, "wb") as log:
        # TMPDIR: the server unpacks the zips under it; this check's temporary directory removes them
        proc = subprocess.Popen([str(STEPFLOW), "lambda", "serve", str(functions), "--port", str(port), "-v"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(workdir)})
    ok = False
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"stepflow lambda serve exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("stepflow lambda serve did not listen within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
        ok = True
    finally:
        # SIGINT is its clean stop: the server retires its awslambdaric workers before exiting
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not ok:
            print("--- stepflow lambda serve log ---\n" + log_path.read_text(errors="replace"))


async def run_examples(endpoint: str, workdir: Path) -> None:
    os.environ["STEPFLOW_LAMBDA_ENDPOINT"] = endpoint  # for ctx.step.lambda_ in the SDK function
    definition = json.loads((HERE / "score_order.json").read_text())
    definition["steps"]["score"]["runtime"]["endpoint_url"] = endpoint  # the file says the default port
    workflow = stepflow.parse_function(definition, source="score_order.json")

    async with stepflow.Engine(app, functions=[workflow], store=f"sqlite:///{workdir}/lambda.db") as engine:
        # the workflow: prepare (in-process) -> score (Lambda)
        ids = await engine.send({"name": "orders/placed", "data": ORDER})
        output = await engine.wait_for_output(ids[0], timeout=60)
        run = (await engine.get_event_runs(ids[0]))[0]
        steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
        print("  workflow output:", output)
        for name in ("prepare", "score"):
            print(f"    {name:8} {steps[name]['status']:9} attempts={steps[name]['attempts']} "
                  f"{steps[name]['output']}")
        assert output == {"order": "A-100", "score": 57, "tier": "gold"}, output
        assert steps["prepare"]["output"] == {"status": 200, "body": {"order": "A-100", "items": 2, "total": 570}}
        assert steps["score"]["status"] == "completed" and steps["score"]["attempts"] == 1, steps["score"]

        # an empty order: the Lambda answers statusCode 400 -> the step fails at once, and so does the run
        ids = await engine.send({"name": "orders/placed", "data": EMPTY})
        run = (await engine.get_event_runs(ids[0]))[0]
        ended = await engine.wait_for_run(run["run_id"], timeout=60)
        score = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}["score"]
        print("  workflow, empty order:", ended["status"], ended["error"])
        assert ended["status"] == "Failed", ended
        error: Any = ended["error"]
        assert error["step_id"] == "score" and error["status"] == 400, error
        assert error["body"] == {"error": "order A-101 has no items"}, error  # the JSON-string body, decoded
        assert score["attempts"] == 1, score  # 4xx: not retried

        # the SDK function: ctx.step.run("prepare") in-process, ctx.step.lambda_("score") in the Lambda
        ids = await engine.send({"name": "orders/check", "data": ORDER})
        output = await engine.wait_for_output(ids[0], timeout=60)
        print("  SDK function output:", output)
        assert output == {"order": "A-100", "accepted": True, "tier": "gold", "score": 57}, output

        ids = await engine.send({"name": "orders/check", "data": EMPTY})
        output = await engine.wait_for_output(ids[0], timeout=60)
        print("  SDK function, empty order:", output)
        assert output == {"order": "A-101", "accepted": False, "status": 400,
                          "reason": "order A-101 has no items"}, output


def main() -> None:
    # run_all stops a check that overruns with SIGTERM: unwind, so that the local Lambda is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="stepflow-lambda-example-") as tmp:
        workdir = Path(tmp)
        functions = workdir / "functions"
        subprocess.run([str(STEPFLOW), "package", "lambda", f"{HERE / 'score.py'}:score",
                        "-o", str(functions / "score.zip")], check=True)
        with local_lambda(functions, workdir) as endpoint:
            asyncio.run(run_examples(endpoint, workdir))
    print("lambda_steps: OK")


if __name__ == "__main__":
    main()
