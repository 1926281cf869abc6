"""The source documents' example as an SDK function: process an uploaded CSV, durably.

    python examples/process_csv.py            # check both ways below, as CI does
    python examples/process_csv.py serve      # only serve the app on :8000 (then: stepflow dev -u ...)

1. Served over HTTP: the app is mounted in an aiohttp server at /api/stepflow, `stepflow dev -u` syncs it,
   `client.send(...)` returns ids and `GET /v1/events/{id}/runs` shows the run Completed with
   {"status": "success", "processedItems": 98, "failedItems": 2}.
2. Embedded: the same function, the same file, run by `stepflow.Engine` in this process — no server.
"""

from __future__ import annotations

import asyncio
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

import stepflow
from stepflow.sdk.serve_aiohttp import add_routes

app = stepflow.App("imports")


def download(file: str) -> list[str]:
    """Fetch the uploaded file (here: a local path) and return its lines."""
    return Path(file).read_text().splitlines()


async def parse_rows(rows: list[str]) -> tuple[list[dict[str, int]], list[str]]:
    results, failures = [], []
    for row in csv.DictReader(rows):
        try:
            if "@" not in row["email"]:
                raise ValueError("bad email")
            results.append({"id": int(row["id"]), "amount": int(row["amount"])})
        except (ValueError, TypeError):
            failures.append(row["id"])
    return results, failures


@app.function(id="process-csv-upload", trigger=stepflow.event("imports/csv.uploaded"))
async def process_csv(ctx: stepflow.Context) -> dict:
    rows = await ctx.step.run("download", download, ctx.event.data["file"])
    results, failures = await ctx.step.run("parse", parse_rows, rows)
    await ctx.step.sleep("cool-down", "2s")
    return {"status": "success", "processedItems": len(results), "failedItems": len(failures)}


# --- running it --------------------------------------------------------------------------------------------

EXPECTED = {"status": "success", "processedItems": 98, "failedItems": 2}


def make_csv(directory: str) -> str:
    path = Path(directory) / "upload.csv"
    lines = ["id,email,amount"] + [
        f"{i},not-an-email,-" if i in (17, 58) else f"{i},user{i}@example.com,{i * 10}" for i in range(1, 101)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_app(port: int) -> web.AppRunner:
    web_app = web.Application()
    add_routes(web_app, app, path="/api/stepflow")
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def over_http(workdir: str, csv_file: str) -> None:
    app_port, server_port = free_port(), free_port()
    runner = await serve_app(app_port)
    stepflow_bin = Path(sys.executable).with_name("stepflow")
    server = subprocess.Popen([str(stepflow_bin), "dev", "--port", str(server_port), "--db", f"{workdir}/http.db",
                               "-u", f"http://127.0.0.1:{app_port}/api/stepflow"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{server_port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:  # wait until the app has synced its function
                try:
                    async with http.get(f"{base}/v1/functions") as resp:
                        if resp.status == 200 and any(f["id"] == "process-csv-upload"
                                                      for f in (await resp.json())["data"]):
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("stepflow dev did not register the app in time")
                await asyncio.sleep(0.1)
            async with stepflow.Client(base) as client:
                ids = await client.send({"name": "imports/csv.uploaded",
                                         "data": {"file": csv_file, "userId": "user_0xp3wqz7vumcvajt"}})
            print(f"  sent event {ids[0]}")
            # exactly what the seed document does: GET /v1/events/{id}/runs until Completed
            headers = {"Authorization": f"Bearer {os.environ.get('STEPFLOW_SIGNING_KEY', '')}"}
            deadline = time.monotonic() + 30
            while True:
                async with http.get(f"{base}/v1/events/{ids[0]}/runs", headers=headers) as resp:
                    runs = (await resp.json())["data"]
                if runs and runs[0]["status"] == "Completed":
                    break
                if runs and runs[0]["status"] in ("Failed", "Cancelled"):
                    raise SystemExit(f"run {runs[0]['status']}: {runs[0].get('error')}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"run not completed in time: {runs}")
                await asyncio.sleep(0.25)
            print(f"  over HTTP: {runs[0]['status']} {runs[0]['output']}")
            assert runs[0]["output"] == EXPECTED, runs[0]["output"]
    finally:
        server.terminate()
        server.wait(10)
        await runner.cleanup()


async def embedded(workdir: str, csv_file: str) -> None:
    async with stepflow.Engine(app, store=f"sqlite:///{workdir}/embedded.db") as engine:
        ids = await engine.send({"name": "imports/csv.uploaded", "data": {"file": csv_file}})
        output = await engine.wait_for_output(ids[0], timeout=30)
        print(f"  embedded: {output}")
        assert output == EXPECTED, output


async def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        csv_file = make_csv(workdir)
        os.environ.setdefault("STEPFLOW_DEV", "1")  # the endpoint accepts unsigned calls from `stepflow dev`
        await over_http(workdir, csv_file)
        await embedded(workdir, csv_file)
    print("process_csv: OK")


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        os.environ.setdefault("STEPFLOW_DEV", "1")
        web_app = web.Application()
        add_routes(web_app, app, path="/api/stepflow")
        web.run_app(web_app, host="127.0.0.1", port=8000)
    else:
        asyncio.run(main())
