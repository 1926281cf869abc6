"""Long-polling an event's runs, and what `stepflow dev` does with functions left from an earlier start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from conftest import RunningServer, StepServer, free_port, workflow_config


async def test_event_runs_wait_returns_once_every_run_ended(stepflow: RunningServer,
                                                             step_server: StepServer) -> None:
    async def slow(_: dict[str, Any], __: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.4)
        return web.json_response({"status": 200, "body": {"done": True}})

    url = step_server.route("/slow", slow)
    fast = step_server.json("/fast", {"status": 200, "body": {"fast": True}})
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="slow-fn"))
    await stepflow.register(workflow_config({"f": {"runtime": {"type": "http", "url": fast}}}, id="fast-fn"))
    ids = await stepflow.client.send({"name": "test/go", "data": {}})
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.get(f"{stepflow.url}/v1/events/{ids[0]}/runs?wait=10s") as resp:
            runs = (await resp.json())["data"]
        elapsed = time.monotonic() - started
        assert sorted(r["status"] for r in runs) == ["Completed", "Completed"]
        assert 0.3 < elapsed < 5
        async with http.get(f"{stepflow.url}/v1/events/{ids[0]}/runs?wait=forever") as resp:
            assert resp.status == 400 and "'wait'" in (await resp.json())["error"]["message"]


def test_dev_deactivates_workflow_functions_not_in_its_files(tmp_path: Path) -> None:
    def workflow(fid: str, event: str) -> Path:
        path = tmp_path / f"{fid}.json"
        path.write_text(json.dumps({"id": fid, "triggers": [{"event": event}], "steps": {
            "s": {"runtime": {"type": "inprocess", "handler": "json:dumps"}}}}))
        return path

    a, b = workflow("fn-a", "test/a"), workflow("fn-b", "test/b")
    stepflow_bin = Path(sys.executable).with_name("stepflow")

    def start(file: Path) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        proc = subprocess.Popen([str(stepflow_bin), "dev", "--port", str(port), "--db", str(tmp_path / "s.db"),
                                 "-f", str(file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        return proc, "".join(lines) + f"\nPORT={port}"

    first, _ = start(a)
    first.terminate()
    first.wait(10)
    second, banner = start(b)
    try:
        assert "fn-a: deactivated" in banner
        port = int(banner.rsplit("PORT=", 1)[1])

        async def functions() -> list[str]:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/v1/functions") as resp:
                return [f["id"] for f in (await resp.json())["data"]]

        assert asyncio.run(functions()) == ["fn-b"]
    finally:
        second.terminate()
        second.wait(10)
