"""`stepflow.testing.replay`: a recorded run's history replayed against the function's code in this process —
step results from the record (no callable runs again), the run's failure raised again, divergences located."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from conftest import free_port
from test_sdk_support import Calls, embedded, first_run

import stepflow
from stepflow import Context
from stepflow.errors import InvalidArgumentError
from stepflow.server import ServerSettings, create_app
from stepflow.testing import replay


def order_app(calls: Calls, *, variant: str = "same") -> stepflow.App:
    """The function as recorded ("same"), or changed afterwards."""
    app = stepflow.App("shop")

    def price() -> int:
        calls.hit("price")
        return 40

    def charge(total: int) -> dict[str, int]:
        calls.hit("charge")
        return {"charged": total}

    @app.function(id="order", trigger=stepflow.event("shop/order"), retries=0)
    async def order(ctx: Context) -> dict[str, int]:
        total = await ctx.step.run("price" if variant != "renamed" else "quote", price)
        receipt = await ctx.step.run("charge", charge, total + ctx.event.data["tip"])
        if variant == "extra-step":
            await ctx.step.run("email", lambda: calls.hit("email"))
        if receipt["charged"] > 50:
            raise ValueError(f"charge of {receipt['charged']} is over the limit")
        return receipt if variant != "other-output" else {"charged": 0}

    return app


async def test_a_completed_run_replays_to_its_output_without_running_steps(tmp_path: Path) -> None:
    calls = Calls()
    app = order_app(calls)
    async with embedded(tmp_path, app) as engine:
        run = await first_run(engine, (await engine.send({"name": "shop/order", "data": {"tip": 2}}))[0])
        assert run["status"] == "Completed" and dict(calls) == {"price": 1, "charge": 1}
        result = await replay(app, run["run_id"], client=engine)
    assert result.matches and result.status == "Completed" and result.output == {"charged": 42}
    assert result.replayed_steps == ["price", "charge"]
    assert dict(calls) == {"price": 1, "charge": 1}  # the step callables did not run again


async def test_a_failed_run_raises_its_exception_again(tmp_path: Path) -> None:
    calls = Calls()
    app = order_app(calls)
    async with embedded(tmp_path, app) as engine:
        run = await first_run(engine, (await engine.send({"name": "shop/order", "data": {"tip": 20}}))[0])
        assert run["status"] == "Failed"
        before = dict(calls)
        result = await replay(app, run["run_id"], client=engine)
    assert result.matches and result.status == "Failed"
    assert isinstance(result.exception, ValueError) and "charge of 60 is over the limit" in str(result.exception)
    assert result.error is not None and result.error["name"] == "ValueError"
    assert dict(calls) == before


@pytest.mark.parametrize(("variant", "step", "needle"), [
    ("renamed", "quote", "reached step 'quote' where the run had already recorded step 'price'"),
    ("extra-step", "email", "reaches step 'email', which the run never recorded"),
    ("other-output", None, "the run returned {'charged': 42}"),
])
async def test_changed_code_is_reported_where_it_diverges(tmp_path: Path, variant: str, step: str | None,
                                                           needle: str) -> None:
    calls = Calls()
    app = order_app(calls)
    async with embedded(tmp_path, app) as engine:
        run = await first_run(engine, (await engine.send({"name": "shop/order", "data": {"tip": 2}}))[0])
        result = await replay(order_app(calls, variant=variant), run["run_id"], client=engine)
    assert not result.matches and result.divergence is not None
    assert result.divergence.step == step and needle in result.divergence.message, result.divergence
    assert "email" not in calls  # a step the record lacks is reported, not run


async def test_replay_from_a_server_over_http(tmp_path: Path) -> None:
    """The history fetched with `stepflow.Client` from a real server's REST API."""
    calls = Calls()
    app = order_app(calls)
    async with embedded(tmp_path, app) as engine:
        run = await first_run(engine, (await engine.send({"name": "shop/order", "data": {"tip": 5}}))[0])
        runner = web.AppRunner(create_app(engine.core, ServerSettings(dev=True)), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with stepflow.Client(f"http://127.0.0.1:{port}") as client:
                result = await replay(app, run["run_id"], client=client)
                with pytest.raises(InvalidArgumentError, match="does not define"):
                    await replay(stepflow.App("other"), run["run_id"], client=client)
        finally:
            await runner.cleanup()
    assert result.matches and result.output == {"charged": 45} and calls["charge"] == 1
