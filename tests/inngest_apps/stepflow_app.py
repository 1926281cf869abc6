"""The stepflow-SDK side of the cross-SDK tests (tests/test_inngest_sdks.py): a `stepflow.App` served over HTTP
(aiohttp), next to the official-SDK apps on the same server.

- `double` (app sf-cross): invoked by the Inngest-SDK functions as "sf-cross-double".
- `call-inngest`: `ctx.step.invoke`s the Inngest-SDK function whose id is in the event (e.g.
  "e2e-python-invoke-child") and returns its output.

Environment: PORT, STEPFLOW_BASE_URL, STEPFLOW_DEV=1 or STEPFLOW_SIGNING_KEY.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

import stepflow
from stepflow.sdk.serve_aiohttp import add_routes

app = stepflow.App("sf-cross")


@app.function(id="double", trigger=stepflow.event("sf-cross/double"))
async def double(ctx: stepflow.Context) -> dict[str, Any]:
    n = ctx.event.data["n"]

    def twice() -> int:
        return int(n) * 2

    return {"doubled": await ctx.step.run("twice", twice), "by": "stepflow"}


@app.function(id="call-inngest", trigger=stepflow.event("sf-cross/call-inngest"))
async def call_inngest(ctx: stepflow.Context) -> dict[str, Any]:
    result = await ctx.step.invoke("call", function=ctx.event.data["target"], data={"n": ctx.event.data["n"]},
                                   timeout="30s")
    return {"via": "stepflow", "result": result}


def main() -> None:
    web_app = web.Application()
    add_routes(web_app, app, path="/api/stepflow")
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sdk": "stepflow"})

    web_app.router.add_get("/health", health)
    web.run_app(web_app, host="127.0.0.1", port=int(os.environ.get("PORT", "8010")), print=None,
                access_log=None)


if __name__ == "__main__":
    main()
