"""The seed's flow, end to end, in-process: the quickest proof the core works."""

from __future__ import annotations

from conftest import RunningServer, StepServer, workflow_config


async def test_three_step_workflow_completes_with_last_output(stepflow: RunningServer, step_server: StepServer) -> None:
    a = step_server.json("/a", {"status": 200, "body": {"rows": 100}})
    b = step_server.json("/b", {"status": 200, "body": {"processedItems": 98, "failedItems": 2}})

    async def report(payload, _):  # type: ignore[no-untyped-def]
        parsed = payload["steps"]["b"]["body"]
        from aiohttp import web
        return web.json_response({"status": 200, "body": {"status": "success", **parsed}})

    c = step_server.route("/c", report)
    await stepflow.register(workflow_config({
        "a": {"runtime": {"type": "http", "url": a}},
        "b": {"runtime": {"type": "http", "url": b}, "after": [{"step": "a"}]},
        "c": {"runtime": {"type": "http", "url": c},
              "after": [{"step": "b", "if": "steps.b.body.processedItems > 0"}]},
    }))
    ids = await stepflow.client.send({"name": "test/go", "data": {"file": "x.csv"}})
    output = await stepflow.client.wait_for_output(ids[0], timeout=10)
    assert output == {"status": "success", "processedItems": 98, "failedItems": 2}
    runs = await stepflow.client.get_event_runs(ids[0])
    assert [r["status"] for r in runs] == ["Completed"]
    steps = await stepflow.client.get_run_steps(runs[0]["run_id"])
    assert [s["step_id"] for s in steps] == ["a", "b", "c"]
    assert all(s["attempts"] == 1 for s in steps)
    # each step saw the Input contract
    first = step_server.calls["/c"][0]
    assert set(first) == {"event", "events", "steps", "ctx"}
    assert first["ctx"]["step_id"] == "c" and first["ctx"]["attempt"] == 0 and first["ctx"]["max_attempts"] == 5
    assert set(first["steps"]) == {"a", "b"}
