"""The SDK functions the SDK benchmark drives: served over HTTP (`python bench/sdk_app.py PORT`) or
imported by the embedded half of the benchmark."""

from __future__ import annotations

import sys

import stepflow

app = stepflow.App("bench")


async def add_one(value: int) -> int:
    return value + 1


@app.function(id="sdk-three", trigger=stepflow.event("bench/sdk-three"))
async def three_steps(ctx: stepflow.Context) -> dict:
    a = await ctx.step.run("a", add_one, 0)
    b = await ctx.step.run("b", add_one, a)
    c = await ctx.step.run("c", add_one, b)
    return {"result": c}


@app.function(id="sdk-one", trigger=stepflow.event("bench/sdk-one"))
async def one_step(ctx: stepflow.Context) -> dict:
    return {"result": await ctx.step.run("a", add_one, 0)}


if __name__ == "__main__":
    import os

    from aiohttp import web

    from stepflow.sdk.serve_aiohttp import add_routes

    os.environ.setdefault("STEPFLOW_DEV", "1")
    web_app = web.Application()
    add_routes(web_app, app, path="/api/stepflow")
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = None
    web.run_app(web_app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=loop)
