"""The durable endpoints' checkpoint API refuses what it must: a checkpoint that would take over another
function, and malformed checkpoints (400 naming the field, never a 500 and never a stored half-run)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from conftest import RunningServer, StepServer, workflow_config

from stepflow.ids import new_ulid


async def post_checkpoints(server: RunningServer, items: list[Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}/v1/checkpoints",
                                                          json={"checkpoints": items}) as resp:
        return resp.status, await resp.json()


async def test_an_endpoint_cannot_take_over_a_workflow(stepflow: RunningServer, step_server: StepServer) -> None:
    url = step_server.json("/s", {"status": 200, "body": {"ok": True}})
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="orders"))
    status, body = await post_checkpoints(stepflow, [{"op": "run", "run_id": new_ulid(), "fn_id": "orders",
                                                      "app_id": "intruder", "url": "http://127.0.0.1:9/orders"}])
    assert status == 409, body
    assert "function 'orders' is a workflow function of app 'default'" in body["error"]["message"]
    assert "not a durable endpoint" in body["error"]["message"]
    # the workflow is untouched: still triggered by its event
    [fn] = (await stepflow.client._request("GET", "/v1/functions"))["data"]
    assert (fn["id"], fn["kind"], fn["triggers"]) == ("orders", "workflow", [{"event": "test/go"}])
    ids = await stepflow.client.send({"name": "test/go", "data": {}})
    assert await stepflow.client.wait_for_output(ids[0], timeout=15) == {"ok": True}


async def test_an_endpoint_cannot_take_over_another_apps_endpoint(stepflow: RunningServer) -> None:
    first = {"op": "run", "run_id": new_ulid(), "fn_id": "GET /pay", "app_id": "shop", "url": "http://127.0.0.1:9/p"}
    assert (await post_checkpoints(stepflow, [first]))[0] == 200
    second = {**first, "run_id": new_ulid(), "app_id": "other"}
    status, body = await post_checkpoints(stepflow, [second])
    assert status == 400 and "already used by app 'shop'" in body["error"]["message"], body


@pytest.mark.parametrize(("item", "needle"), [
    ({"op": "__init__"}, "unknown checkpoint op '__init__'"),
    ({"op": "__class__"}, "unknown checkpoint op '__class__'"),
    ({"op": ["run"]}, "unknown checkpoint op"),
    ({"op": "run", "run_id": 7}, "'run_id' must be a ULID"),
    ({"op": "run", "fn_id": "f", "app_id": "a", "url": "http://x/", "event": ["not", "an", "object"]},
     "'event' must be an object or null, got list"),
    ({"op": "run", "fn_id": "f", "app_id": "a", "url": "http://x/", "started_at": "abc"},
     "'started_at' must be a whole number or null, got str"),
    ({"op": "run", "fn_id": "f", "app_id": "a"}, "'url' must be a string, got NoneType"),
    ({"op": "async", "attempt": "x"}, "'attempt' must be a whole number or null, got str"),
    ({"op": "steps", "steps": [{"op": "StepRun", "data": 1}]}, "StepRun #1 has no 'id'"),
    ({"op": "steps", "steps": "nope"}, "'steps' must be a list, got str"),
    ({"op": "response", "result": []}, "'result' must be an object, got list"),
], ids=["init", "class", "op-list", "run-id", "event-list", "started-at", "no-url", "attempt", "steprun-no-id",
        "steps-str", "result-list"])
async def test_malformed_checkpoints_are_400_naming_the_field(stepflow: RunningServer, item: dict[str, Any],
                                                               needle: str) -> None:
    item = {"run_id": new_ulid(), **item}
    status, body = await post_checkpoints(stepflow, [item])
    assert status == 400, body
    assert needle in body["error"]["message"], body
    assert (await stepflow.client._request("GET", "/v1/runs"))["data"] == []
    assert (await stepflow.client._request("GET", "/v1/functions"))["data"] == []
