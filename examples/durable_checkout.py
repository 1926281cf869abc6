"""A durable API endpoint: the checkout handler of issue 7, served by aiohttp, checked end to end.

    .venv/bin/python examples/durable_checkout.py

What it does (and checks):

1. starts a stepflow server as a subprocess (`stepflow dev --port <free> --db <tmp> --signing-key <random>`,
   so resume calls are signed and the output URL's token is made with a real key);
2. serves the API below on another free port, with `provider.aiohttp_middleware`;
3. a client calls `POST /checkout?amount=4200`. The handler runs "charge" inline, reaches
   `step.sleep("settle", "2s")` and turns asynchronous: the client gets a 303 to
   `/v1/runs/{id}/output?token=…`, follows it, and that request blocks until the engine has resumed the handler
   (signed call, "charge" replayed from its memo) and "receipt" has run; it then answers the handler's final
   status, headers and body — the receipt;
4. the run (`X-Run-ID`) is Completed with exactly three steps — charge, settle, receipt — the card was charged
   once, and the recorded request has no body (`omit_request_body=True`).

The amount comes from the query string: with `omit_request_body=True` the body is not recorded, so a resumed
handler would not see it (and must not read it). The query string is recorded with the run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

import stepflow
from stepflow import endpoints

# --- the API ----------------------------------------------------------------------------------------------

calls = {"charge": 0, "receipt": 0}  # how often each side effect really ran (resumes replay memoized steps)


async def charge_card(amount: int) -> dict[str, Any]:
    calls["charge"] += 1
    return {"charge_id": f"ch_{secrets.token_hex(4)}", "amount": amount}


def send_receipt(charge: dict[str, Any]) -> dict[str, Any]:
    calls["receipt"] += 1
    return {"receipt": f"rcpt_{charge['charge_id'][3:]}", "charge_id": charge["charge_id"],
            "amount": charge["amount"]}


@endpoints.durable(id="checkout", omit_request_body=True)
async def checkout(request: web.Request, step: Any) -> web.Response:
    amount = int(request.query["amount"])  # the query string is recorded with the run: a resume sees it too
    charge = await step.run("charge", charge_card, amount)
    await step.sleep("settle", "2s")  # the handler turns asynchronous here
    receipt = await step.run("receipt", send_receipt, charge)
    return web.json_response(receipt)


# --- running it -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, db: str, signing_key: str) -> subprocess.Popen[str]:
    stepflow_bin = Path(sys.executable).with_name("stepflow")
    return subprocess.Popen([str(stepflow_bin), "dev", "--port", str(port), "--db", db,
                             "--signing-key", signing_key],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def wait_healthy(base: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{base}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"stepflow dev exited with {server.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("stepflow dev did not start in time")
            await asyncio.sleep(0.1)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")


async def scenario(client: stepflow.Client, api: str) -> None:
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(f"{api}/checkout?amount=4200", json={"note": "not recorded, never read"}) as resp:
            body = await resp.json()
            seconds = time.monotonic() - started
            check(len(resp.history) == 1, f"expected one redirect, got {[r.status for r in resp.history]}")
            first = resp.history[0]
            run_id = first.headers["X-Run-ID"]
            location = first.headers["Location"]
            print(f"POST /checkout?amount=4200 -> {first.status} (X-Run-ID {run_id})")
            print(f"  Location: {location.split('?')[0]}?token=…")
            print(f"GET Location -> {resp.status} after {seconds:.1f}s total: {body}")
            check(first.status == 303, f"expected 303, got {first.status}")
            check("/v1/runs/" in location and "token=" in location, location)
            check(resp.status == 200, f"final status {resp.status}")
            check(resp.headers.get("X-Run-ID") == run_id, "the final response carries the same X-Run-ID")
            check(resp.headers.get("Content-Type", "").startswith("application/json"), "replayed headers")
            check(body["amount"] == 4200 and body["receipt"].startswith("rcpt_"), f"receipt {body}")

        run = await client.get_run(run_id)
        steps = await client.get_run_steps(run_id)
        print(f"run {run_id}: {run['status']}, function {run['function_id']}")
        for s in steps:
            print(f"  step {s['step_id']:<8} {s['status']:<10} output {s['output']}")
        check(run["status"] == "Completed", f"run status {run['status']}")
        check([s["step_id"] for s in steps] == ["charge", "settle", "receipt"],
              f"expected exactly the steps charge, settle, receipt; got {[s['step_id'] for s in steps]}")
        check(all(s["status"] == "completed" for s in steps), f"step statuses {[s['status'] for s in steps]}")
        output = run["output"]
        print(f"  recorded response: {output['status_code']} {output['body']}")
        check(output["status_code"] == 200 and stepflow.codec.loads(output["body"]) == body, f"output {output}")

        request = (await client.get_event(run["event_id"]))["data"]
        print(f"  recorded request: {request['method']} {request['path']}?{request['query_params']} "
              f"(body recorded: {'body' in request})")
        check(request["query_params"] == "amount=4200" and "body" not in request, f"recorded request {request}")
        print(f"side effects: charged {calls['charge']}x, receipts sent {calls['receipt']}x")
        check(calls == {"charge": 1, "receipt": 1}, f"each step runs once, resumes replay it: {calls}")


async def main() -> None:
    signing_key = f"signkey-dev-{secrets.token_hex(32)}"
    server_port, api_port = free_port(), free_port()
    base, api = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{api_port}"
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # run_all's timeout: clean up

    with tempfile.TemporaryDirectory() as workdir:
        server = start_server(server_port, f"{workdir}/stepflow.db", signing_key)
        runner: web.AppRunner | None = None
        provider = None
        try:
            await wait_healthy(base, server)
            print(f"stepflow dev on {base}")
            async with stepflow.Client(base, signing_key=signing_key) as client:
                # the domain is where the engine calls the endpoint back; here a local URL with its scheme
                provider = endpoints.setup(domain=api, client=client)
                web_app = web.Application()
                web_app.middlewares.append(provider.aiohttp_middleware)
                web_app.router.add_post("/checkout", checkout)
                runner = web.AppRunner(web_app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", api_port).start()
                print(f"API on {api}")
                await scenario(client, api)
        finally:
            if runner is not None:
                await runner.cleanup()
            if provider is not None:
                drained = await provider.wait(10)  # every checkpoint stored before we stop
                await provider.close()
                if not drained:
                    print(f"warning: {provider.checkpointer.pending()} checkpoints not delivered")
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if sys.exc_info()[0] is not None and server.stdout is not None:
                print("--- stepflow dev output ---\n" + server.stdout.read())
    print("durable_checkout: OK")


if __name__ == "__main__":
    os.environ.pop("STEPFLOW_DEV", None)  # run as in production: signed resume calls are verified
    asyncio.run(main())
