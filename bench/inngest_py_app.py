"""The SDK benchmark's functions written with the official Inngest Python SDK (pip `inngest`), served by FastAPI
under uvicorn: `python bench/inngest_py_app.py PORT`. The same functions as bench/sdk_app.py."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("INNGEST_DEV", "1")  # dev mode: no signatures, as `stepflow dev` is keyless

import fastapi  # noqa: E402
import inngest  # noqa: E402
import inngest.fast_api  # noqa: E402

client = inngest.Inngest(app_id="bench-inngest", is_production=False)


def add_one(value: int) -> int:
    return value + 1


@client.create_function(fn_id="sdk-three", trigger=inngest.TriggerEvent(event="bench/inngest-three"))
async def three_steps(ctx: inngest.Context) -> dict[str, int]:
    a = await ctx.step.run("a", add_one, 0)
    b = await ctx.step.run("b", add_one, a)
    c = await ctx.step.run("c", add_one, b)
    return {"result": c}


@client.create_function(fn_id="sdk-one", trigger=inngest.TriggerEvent(event="bench/inngest-one"))
async def one_step(ctx: inngest.Context) -> dict[str, int]:
    return {"result": await ctx.step.run("a", add_one, 0)}


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [three_steps, one_step])

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
