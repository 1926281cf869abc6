"""`POST /v2/functions/{id}/invoke`: a run of one function, whatever its triggers, started with a payload."""

from __future__ import annotations

import aiohttp
from conftest import RunningServer, ServerFactory, StepServer, workflow_config

from stepflow.server import ServerSettings


async def test_invoking_a_function_starts_one_run_with_the_payload(stepflow: RunningServer,
                                                                   step_server: StepServer) -> None:
    url = step_server.json("/s", {"status": 200, "body": {"ok": True}})
    await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": url}}}, id="report",
                                            event="never/sent"))
    run_id = await stepflow.client.invoke("report", {"month": "2026-11"})
    run = await stepflow.client.wait_for_run(run_id, timeout=15)
    assert run["status"] == "Completed" and run["function_id"] == "report"
    event = (await stepflow.client._request("GET", f"/v1/events/{run['event_id']}"))["data"]
    assert event["name"] == "inngest/function.invoked" and event["data"] == {"month": "2026-11"}
    assert step_server.calls["/s"][0]["event"]["data"] == {"month": "2026-11"}
    # no other function ran: invoking is not sending an event to everyone
    assert [r["run_id"] for r in (await stepflow.client.list_runs())["data"]] == [run_id]


async def test_invoke_refuses_unknown_functions_and_bad_bodies(stepflow: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stepflow.url}/v2/functions/nope/invoke", json={"data": {}}) as resp:
            assert resp.status == 404
            assert "no function 'nope'" in (await resp.json())["error"]["message"]
        for bad, needle in ((b"[1]", "expected"), (b"{\"data\": 5}", "'data' must be an object"),
                            (b"{\"other\": 1}", "expected"), (b"{nope", "not JSON")):
            await stepflow.register(workflow_config({"s": {"runtime": {"type": "http", "url": "http://127.0.0.1:9/"}}},
                                                    id="wf"))
            async with http.post(f"{stepflow.url}/v2/functions/wf/invoke", data=bad) as resp:
                assert resp.status == 400, bad
                assert needle in (await resp.json())["error"]["message"], bad
    assert (await stepflow.client.list_runs())["data"] == []


async def test_invoke_needs_the_signing_key(stepflow_factory: ServerFactory) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["k" * 40], event_keys=["e" * 20]))
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}/v2/functions/wf/invoke",
                                                          json={"data": {}}) as resp:
        assert resp.status == 401
