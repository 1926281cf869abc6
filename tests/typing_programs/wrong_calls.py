"""Calls mypy must refuse: step functions are checked against their own parameters and return types."""

from __future__ import annotations

import stepflow

app = stepflow.App("wrong")


def add(a: int, b: int) -> int:
    return a + b


@app.function(id="f", trigger=stepflow.event("t/go"))
async def f(ctx: stepflow.Context) -> str:
    await ctx.step.run("bad-argument", add, 1, "two")  # line 16: "two" is not an int
    await ctx.step.run("missing-argument", add, 1)  # line 17: b is missing
    text: str = await ctx.step.run("bad-result", add, 1, 2)  # line 18: an int is not a str
    return text
