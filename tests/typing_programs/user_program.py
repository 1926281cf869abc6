"""A small user program, as a stepflow user writes it: it must type-check under mypy --strict (with the
`py.typed` stepflow ships), values typed from the step functions themselves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

import stepflow
from stepflow import endpoints

app = stepflow.App("shop")


@dataclass
class Order:
    id: str
    total: int


def add(a: int, b: int) -> int:
    return a + b


async def load_order(order_id: str) -> Order:
    return Order(order_id, 42)


@app.function(id="checkout", trigger=stepflow.event("shop/checkout"), retries=3)
async def checkout(ctx: stepflow.Context) -> dict[str, int]:
    order = await ctx.step.run("load", load_order, str(ctx.event.data["order"]))
    total: int = await ctx.step.run("add", add, order.total, 8)
    await ctx.step.sleep("cool-down", "1s")
    return {"total": total}


@endpoints.durable(id="quote")
async def quote(request: web.Request, step: stepflow.sdk.steps.StepTools) -> web.Response:
    total = await step.run("price", add, 1, 2)
    return web.json_response({"total": total})


async def main() -> None:
    async with stepflow.Engine(app) as engine:
        ids: list[str] = await engine.send({"name": "shop/checkout", "data": {"order": "o-1"}})
        print(await engine.wait_for_output(ids[0], timeout=10))
    async with stepflow.Client("http://127.0.0.1:8288") as client:
        runs = await client.list_runs(status="Failed")
        print(len(runs["data"]))


if __name__ == "__main__":
    asyncio.run(main())
