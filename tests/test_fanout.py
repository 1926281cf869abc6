"""Fan-out: one event starts one run of every function whose trigger matches — exact names, `prefix/*`
wildcards, and CEL `if` filters — and no run of any other function. Each function here is a one-step
workflow whose step has its own path on a real step server, so "which functions ran" is seen twice: in the
event's runs and in the calls the step server received."""

from __future__ import annotations

from typing import Any

from conftest import RunningServer, StepServer


async def declare(server: RunningServer, step_server: StepServer, id: str, *triggers: dict[str, Any]) -> None:
    """A one-step function `id` whose step answers `{"fn": id}` at /<id>."""
    url = step_server.json(f"/{id}", {"status": 200, "body": {"fn": id}})
    await server.register({"id": id, "triggers": list(triggers),
                           "steps": {"only": {"runtime": {"type": "http", "url": url}}}})


async def runs_of(server: RunningServer, event_id: str) -> dict[str, dict[str, Any]]:
    """The event's runs, waited to their end, by function id (one run per function, checked)."""
    runs = await server.client.get_event_runs(event_id)
    by_function = {r["function_id"]: r for r in runs}
    assert len(by_function) == len(runs), f"a function ran twice for one event: {runs}"
    assert len({r["run_id"] for r in runs}) == len(runs)
    for run in runs:
        assert run["event_id"] == event_id
        ended = await server.client.wait_for_run(run["run_id"], timeout=10)
        assert ended["status"] == "Completed", ended
        assert ended["output"] == {"fn": run["function_id"]}
        by_function[run["function_id"]] = ended
    return by_function


async def send(server: RunningServer, name: str, data: dict[str, Any] | None = None) -> str:
    [event_id] = await server.client.send({"name": name, "data": data or {}})
    return event_id


def called_with(step_server: StepServer, fn: str) -> list[str]:
    """The ids of the events whose runs called function `fn`'s step."""
    return [call["event"]["id"] for call in step_server.calls.get(f"/{fn}", [])]


async def shop(server: RunningServer, step_server: StepServer) -> None:
    await declare(server, step_server, "exact", {"event": "shop/order.created"})
    await declare(server, step_server, "wildcard", {"event": "shop/*"})
    await declare(server, step_server, "big-orders", {"event": "shop/order.created", "if": "event.data.amount > 100"})
    await declare(server, step_server, "pro-plan", {"event": "shop/*", "if": "event.data.plan == 'pro'"})
    await declare(server, step_server, "billing", {"event": "billing/invoice.paid"})
    await declare(server, step_server, "shopping", {"event": "shopping/*"})


async def test_one_event_starts_one_run_of_every_matching_function(stepflow: RunningServer,
                                                                   step_server: StepServer) -> None:
    await shop(stepflow, step_server)
    event_id = await send(stepflow, "shop/order.created", {"amount": 150, "plan": "pro"})
    runs = await runs_of(stepflow, event_id)
    assert set(runs) == {"exact", "wildcard", "big-orders", "pro-plan"}
    for fn in ("exact", "wildcard", "big-orders", "pro-plan"):
        assert called_with(step_server, fn) == [event_id]
    for fn in ("billing", "shopping"):
        assert called_with(step_server, fn) == []
    # every run saw the same event
    for fn in runs:
        assert step_server.calls[f"/{fn}"][0]["event"]["data"] == {"amount": 150, "plan": "pro"}
        assert step_server.calls[f"/{fn}"][0]["ctx"]["function_id"] == fn


async def test_a_filter_that_is_false_does_not_match(stepflow: RunningServer, step_server: StepServer) -> None:
    await shop(stepflow, step_server)
    small = await send(stepflow, "shop/order.created", {"amount": 100, "plan": "free"})
    assert set(await runs_of(stepflow, small)) == {"exact", "wildcard"}
    assert called_with(step_server, "big-orders") == []
    assert called_with(step_server, "pro-plan") == []


async def test_a_filter_that_errors_does_not_match_and_spoils_nothing_else(stepflow: RunningServer,
                                                                           step_server: StepServer) -> None:
    await shop(stepflow, step_server)
    # no `amount` and no `plan`: both filters fail to evaluate; they simply do not match
    event_id = await send(stepflow, "shop/order.created", {"note": "no amount"})
    assert set(await runs_of(stepflow, event_id)) == {"exact", "wildcard"}
    # a wrong type in the data is an evaluation error too
    typed = await send(stepflow, "shop/order.created", {"amount": "lots"})
    assert set(await runs_of(stepflow, typed)) == {"exact", "wildcard"}
    assert called_with(step_server, "big-orders") == []


async def test_a_filter_that_is_not_boolean_does_not_match(stepflow: RunningServer, step_server: StepServer) -> None:
    await declare(stepflow, step_server, "truthy", {"event": "test/go", "if": "event.data.amount"})
    await declare(stepflow, step_server, "plain", {"event": "test/go"})
    event_id = await send(stepflow, "test/go", {"amount": 5})
    assert set(await runs_of(stepflow, event_id)) == {"plain"}


async def test_wildcards_match_by_prefix_only(stepflow: RunningServer, step_server: StepServer) -> None:
    await shop(stepflow, step_server)
    refund = await send(stepflow, "shop/refund.issued")
    assert set(await runs_of(stepflow, refund)) == {"wildcard"}
    nested = await send(stepflow, "shop/eu/order.created")
    assert set(await runs_of(stepflow, nested)) == {"wildcard"}
    other_prefix = await send(stepflow, "shopping/cart.updated")
    assert set(await runs_of(stepflow, other_prefix)) == {"shopping"}
    bare = await send(stepflow, "shop")  # not under "shop/"
    assert await stepflow.client.get_event_runs(bare) == []


async def test_exact_names_match_exactly(stepflow: RunningServer, step_server: StepServer) -> None:
    await shop(stepflow, step_server)
    invoice = await send(stepflow, "billing/invoice.paid")
    assert set(await runs_of(stepflow, invoice)) == {"billing"}
    for near_miss in ("billing/invoice.paid.late", "Billing/invoice.paid", "billing/invoice"):
        event_id = await send(stepflow, near_miss)
        assert await stepflow.client.get_event_runs(event_id) == [], near_miss
    assert called_with(step_server, "billing") == [invoice]


async def test_an_event_that_matches_nothing_is_stored_with_no_runs(stepflow: RunningServer,
                                                                    step_server: StepServer) -> None:
    await shop(stepflow, step_server)
    event_id = await send(stepflow, "nobody/listens", {"x": 1})
    assert await stepflow.client.get_event_runs(event_id) == []
    assert (await stepflow.client.get_event(event_id))["name"] == "nobody/listens"
    assert (await stepflow.client.list_runs())["data"] == []
    assert step_server.calls == {}


async def test_a_function_with_several_matching_triggers_runs_once(stepflow: RunningServer,
                                                                   step_server: StepServer) -> None:
    await declare(stepflow, step_server, "multi", {"event": "shop/*"}, {"event": "shop/order.created"},
                  {"event": "shop/order.created", "if": "event.data.amount > 1"})
    event_id = await send(stepflow, "shop/order.created", {"amount": 5})
    assert set(await runs_of(stepflow, event_id)) == {"multi"}
    assert called_with(step_server, "multi") == [event_id]


async def test_any_trigger_of_a_function_can_start_it(stepflow: RunningServer, step_server: StepServer) -> None:
    await declare(stepflow, step_server, "either", {"event": "a/one"}, {"event": "b/two", "if": "event.data.ok"})
    one = await send(stepflow, "a/one")
    two = await send(stepflow, "b/two", {"ok": True})
    not_ok = await send(stepflow, "b/two", {"ok": False})
    assert set(await runs_of(stepflow, one)) == {"either"}
    assert set(await runs_of(stepflow, two)) == {"either"}
    assert await stepflow.client.get_event_runs(not_ok) == []
    assert sorted(called_with(step_server, "either")) == sorted([one, two])


async def test_a_star_trigger_matches_every_event(stepflow: RunningServer, step_server: StepServer) -> None:
    await declare(stepflow, step_server, "audit", {"event": "*"})
    ids = [await send(stepflow, name) for name in ("a/b", "x", "shop/order.created")]
    for event_id in ids:
        assert set(await runs_of(stepflow, event_id)) == {"audit"}
    assert sorted(called_with(step_server, "audit")) == sorted(ids)


async def test_filters_see_the_whole_event(stepflow: RunningServer, step_server: StepServer) -> None:
    await declare(stepflow, step_server, "by-user", {"event": "test/*", "if": "event.user.tier == 'gold'"})
    await declare(stepflow, step_server, "by-name", {"event": "test/*", "if": "event.name.endsWith('.done')"})
    await declare(stepflow, step_server, "nested",
                  {"event": "test/*", "if": "size(event.data.items) >= 2 && event.data.items[0].sku == 'A'"})
    [gold, done, items] = await stepflow.client.send([
        {"name": "test/start", "user": {"tier": "gold"}},
        {"name": "test/job.done"},
        {"name": "test/cart", "data": {"items": [{"sku": "A"}, {"sku": "B"}]}},
    ])
    assert set(await runs_of(stepflow, gold)) == {"by-user"}
    assert set(await runs_of(stepflow, done)) == {"by-name"}
    assert set(await runs_of(stepflow, items)) == {"nested"}


async def test_each_event_of_an_array_fans_out_on_its_own(stepflow: RunningServer, step_server: StepServer) -> None:
    await shop(stepflow, step_server)
    ids = await stepflow.client.send([
        {"name": "shop/order.created", "data": {"amount": 500}},
        {"name": "billing/invoice.paid"},
        {"name": "shop/order.created", "data": {"amount": 1}},
    ])
    assert set(await runs_of(stepflow, ids[0])) == {"exact", "wildcard", "big-orders"}
    assert set(await runs_of(stepflow, ids[1])) == {"billing"}
    assert set(await runs_of(stepflow, ids[2])) == {"exact", "wildcard"}
    assert called_with(step_server, "big-orders") == [ids[0]]
    assert sorted(called_with(step_server, "exact")) == sorted([ids[0], ids[2]])
    all_runs = (await stepflow.client.list_runs(limit=100))["data"]
    assert len(all_runs) == 6


async def test_a_function_registered_later_matches_only_later_events(stepflow: RunningServer,
                                                                     step_server: StepServer) -> None:
    await declare(stepflow, step_server, "first", {"event": "test/go"})
    early = await send(stepflow, "test/go")
    await declare(stepflow, step_server, "second", {"event": "test/go"})
    late = await send(stepflow, "test/go")
    assert set(await runs_of(stepflow, early)) == {"first"}
    assert set(await runs_of(stepflow, late)) == {"first", "second"}
