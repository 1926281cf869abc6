"""Docker steps, end to end on a real Docker engine (./scripts/docker-setup provides it):

1. an SDK-free busybox shell step (wordcount/: a Dockerfile and a 10-line shell script);
2. a Python step packaged with `stepflow package docker` (score.py);
3. a mixed workflow: HTTP step → docker step → docker step → in-process step.

    .venv/bin/python examples/docker_steps/check.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from aiohttp import web

import stepflow

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for the in-process step's module
STEPFLOW = Path(sys.executable).with_name("stepflow")


def build_images() -> None:
    subprocess.run(["docker", "build", "-q", "-t", "stepflow-example/wordcount:1", str(HERE / "wordcount")],
                   check=True, stdout=subprocess.DEVNULL, env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin"})
    subprocess.run([str(STEPFLOW), "package", "docker", str(HERE / "score.py") + ":score",
                    "--tag", "stepflow-example/score:1", "--base", "stepflow-test/python:3.11"], check=True)


async def fetch_server() -> tuple[web.AppRunner, str]:
    """The HTTP step: fetches the document (here: makes it up)."""
    async def fetch(request: web.Request) -> web.Response:
        payload = await request.json()
        doc_id = payload["event"]["data"]["id"]
        return web.json_response({"status": 200, "body": {"text": f"document {doc_id} has five words",
                                                          "server": "fetch-1"}})

    app = web.Application()
    app.router.add_post("/fetch", fetch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/fetch"


async def main() -> None:
    build_images()
    runner, fetch_url = await fetch_server()
    pipeline = stepflow.workflow("score-document", triggers=[stepflow.event("docs/uploaded")], steps={
        "fetch": {"runtime": {"type": "http", "url": fetch_url}},
        # the docker step reads the Input and needs the fetched text: it is in steps.fetch.body
        "count": {"runtime": {"type": "docker", "image": "stepflow-example/wordcount:1"}, "after": ["fetch"]},
        "score": {"runtime": {"type": "docker", "image": "stepflow-example/score:1", "memory": "128m"},
                  "after": ["count"]},
        "summary": {"runtime": {"type": "inprocess", "handler": "local_steps:summarize"}, "after": ["score"]},
    })
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with stepflow.Engine(store=f"sqlite:///{tmp}/docker.db", functions=[pipeline]) as engine:
                ids = await engine.send({"name": "docs/uploaded", "data": {"id": "doc-42"}})
                output = await engine.wait_for_output(ids[0], timeout=120)
                run = (await engine.get_event_runs(ids[0]))[0]
                steps = {s["step_id"]: s for s in await engine.get_run_steps(run["run_id"])}
    finally:
        await runner.cleanup()
    print("  output:", output)
    for name in ("fetch", "count", "score", "summary"):
        print(f"  {name:8} {steps[name]['status']:9} {steps[name]['output']}")
    assert output == {"document": "doc-42", "words": 5, "score": 50, "fetched_by": "fetch-1"}, output
    assert steps["count"]["logs"] == "counting words\n"
    print("docker_steps: OK")


if __name__ == "__main__":
    asyncio.run(main())
