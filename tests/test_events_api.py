"""The event API, `POST /e/{event_key}`: ids, deduplication, validation (nothing of a rejected request is
stored) and event-key auth. A real server on 127.0.0.1 with a real SQLite file; requests are raw HTTP so
the wire format itself is what is checked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import RunningServer, ServerFactory, StepServer, workflow_config
from ulid import ULID

from stepflow import codec
from stepflow.ids import is_ulid
from stepflow.server import ServerSettings


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_events(http: aiohttp.ClientSession, server: RunningServer, body: Any, *, key: str = "dev",
                      raw: bool = False) -> tuple[int, Any]:
    """POST a body (a document, or raw bytes when `raw`) to /e/{key}; returns (status, decoded JSON)."""
    data = body if raw else codec.dumps(body)
    async with http.post(f"{server.url}/e/{key}", data=data,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, codec.loads(await resp.read())


async def get(http: aiohttp.ClientSession, server: RunningServer, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {server.settings.signing_keys[0]}"} if server.settings.signing_keys else {}
    async with http.get(server.url + path, headers=headers) as resp:
        return resp.status, codec.loads(await resp.read())


def assert_error(status: int, body: Any, expected_status: int, *needles: str) -> None:
    """An error of the event API is `{"error": message, "code", "status"}` — the shape the official Inngest
    SDKs' clients parse — with the right status, and its message names the problem."""
    assert status == expected_status, body
    assert set(body) == {"error", "code", "status"}, body
    assert body["status"] == expected_status
    assert isinstance(body["code"], str) and body["code"]
    message = body["error"]
    assert isinstance(message, str)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def assert_rest_error(status: int, body: Any, expected_status: int, *needles: str) -> None:
    """A REST API error keeps its documented `{"error": {"code", "message"}}`."""
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    for needle in needles:
        assert needle in body["error"]["message"], f"{needle!r} not in {body['error']['message']!r}"


async def one_step_function(server: RunningServer, step_server: StepServer, *, event: str = "test/go",
                            id: str = "wf") -> str:
    """Register a one-step workflow triggered by `event`; returns the step's path on the step server."""
    path = f"/{id}"
    url = step_server.json(path, {"status": 200, "body": {"ok": True}})
    await server.register(workflow_config({"only": {"runtime": {"type": "http", "url": url}}}, id=id, event=event))
    return path


# --- accepted events ---------------------------------------------------------------------------------------


async def test_one_event_gets_a_fresh_ulid_and_is_stored(stepflow: RunningServer,
                                                         http: aiohttp.ClientSession) -> None:
    before = time.time()
    status, body = await post_events(http, stepflow, {"name": "test/go", "data": {"file": "x.csv"}})
    assert status == 200
    assert set(body) == {"ids", "status"} and body["status"] == 200
    [event_id] = body["ids"]
    assert is_ulid(event_id)
    # a real ULID made now: its timestamp is this moment
    assert abs(ULID.from_str(event_id).timestamp - before) < 5

    status, stored = await get(http, stepflow, f"/v1/events/{event_id}")
    assert status == 200
    event = stored["data"]
    assert event["id"] == event_id and event["name"] == "test/go" and event["data"] == {"file": "x.csv"}
    assert abs(event["ts"] / 1000 - before) < 5          # ts defaults to the time of receipt, in ms
    assert isinstance(event["received_at"], str) and event["received_at"].endswith("Z")


async def test_an_array_gets_one_id_per_event_in_order(stepflow: RunningServer,
                                                       http: aiohttp.ClientSession) -> None:
    events = [{"name": f"test/n{i}", "data": {"i": i}} for i in range(5)]
    status, body = await post_events(http, stepflow, events)
    assert status == 200 and body["status"] == 200
    ids = body["ids"]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert all(is_ulid(i) for i in ids)
    assert ids == sorted(ids)  # ULIDs made in order sort in order
    for i, event_id in enumerate(ids):
        _, stored = await get(http, stepflow, f"/v1/events/{event_id}")
        assert stored["data"]["name"] == f"test/n{i}" and stored["data"]["data"] == {"i": i}


async def test_optional_fields_are_kept_and_data_defaults_to_an_empty_object(
        stepflow: RunningServer, http: aiohttp.ClientSession) -> None:
    status, body = await post_events(http, stepflow, [
        {"name": "test/full", "data": {"a": 1}, "user": {"email": "a@b.c"}, "ts": 1714056405337, "v": "2024-01"},
        {"name": "test/bare"},
        {"name": "test/null-data", "data": None},
    ])
    assert status == 200
    full_id, bare_id, null_id = body["ids"]
    _, full = await get(http, stepflow, f"/v1/events/{full_id}")
    assert full["data"]["user"] == {"email": "a@b.c"}
    assert full["data"]["ts"] == 1714056405337
    assert full["data"]["v"] == "2024-01"
    _, bare = await get(http, stepflow, f"/v1/events/{bare_id}")
    assert bare["data"]["data"] == {}
    _, null = await get(http, stepflow, f"/v1/events/{null_id}")
    assert null["data"]["data"] == {}


async def test_any_event_key_is_accepted_by_a_keyless_dev_server(stepflow: RunningServer,
                                                                 http: aiohttp.ClientSession) -> None:
    for key in ("dev", "anything", "x"):
        status, body = await post_events(http, stepflow, {"name": "test/go"}, key=key)
        assert status == 200, body


# --- deduplication -----------------------------------------------------------------------------------------


async def test_a_sender_given_id_deduplicates(stepflow: RunningServer, step_server: StepServer,
                                              http: aiohttp.ClientSession) -> None:
    path = await one_step_function(stepflow, step_server)
    status, first = await post_events(http, stepflow, {"id": "order-42", "name": "test/go", "data": {"n": 1}})
    assert status == 200 and first["ids"] == ["order-42"]
    await stepflow.client.wait_for_output("order-42", timeout=10)

    # the same id again (even with other data): the same id comes back, and nothing new happens
    status, second = await post_events(http, stepflow, {"id": "order-42", "name": "test/go", "data": {"n": 2}})
    assert status == 200 and second["ids"] == ["order-42"]

    _, runs = await get(http, stepflow, "/v1/events/order-42/runs")
    assert len(runs["data"]) == 1
    _, event = await get(http, stepflow, "/v1/events/order-42")
    assert event["data"]["data"] == {"n": 1}  # the first event is the event
    assert len(step_server.calls[path]) == 1
    _, listed = await get(http, stepflow, "/v1/runs")
    assert len(listed["data"]) == 1


async def test_duplicates_inside_one_request_make_one_event(stepflow: RunningServer, step_server: StepServer,
                                                            http: aiohttp.ClientSession) -> None:
    await one_step_function(stepflow, step_server)
    status, body = await post_events(http, stepflow, [
        {"id": "dup-1", "name": "test/go", "data": {"n": 1}},
        {"name": "test/go", "data": {"n": 2}},
        {"id": "dup-1", "name": "test/go", "data": {"n": 3}},
    ])
    assert status == 200
    assert body["ids"][0] == body["ids"][2] == "dup-1"
    assert is_ulid(body["ids"][1])
    _, runs = await get(http, stepflow, "/v1/events/dup-1/runs")
    assert len(runs["data"]) == 1
    _, event = await get(http, stepflow, "/v1/events/dup-1")
    assert event["data"]["data"] == {"n": 1}
    _, listed = await get(http, stepflow, "/v1/runs")
    assert len(listed["data"]) == 2


async def test_a_duplicate_id_in_one_request_does_not_borrow_the_other_events_triggers(
        stepflow: RunningServer, step_server: StepServer, http: aiohttp.ClientSession) -> None:
    await one_step_function(stepflow, step_server, event="test/a", id="on-a")
    await one_step_function(stepflow, step_server, event="test/b", id="on-b")
    status, body = await post_events(http, stepflow, [{"id": "same", "name": "test/a"},
                                                      {"id": "same", "name": "test/b"}])
    assert status == 200 and body["ids"] == ["same", "same"]
    _, event = await get(http, stepflow, "/v1/events/same")
    assert event["data"]["name"] == "test/a"
    _, runs = await get(http, stepflow, "/v1/events/same/runs")
    # the stored event is test/a, so its one run must be of the function triggered by test/a
    assert [r["function_id"] for r in runs["data"]] == ["on-a"]


# --- validation: every rejection is a clear JSON error, and nothing is stored -----------------------------

BIG = "x" * (512 * 1024)
DEEP: dict[str, Any] = {}
_cursor = DEEP
for _ in range(150):
    _cursor["a"] = {}
    _cursor = _cursor["a"]


@pytest.mark.parametrize(("body", "status", "needles"), [
    ({"data": {}}, 400, ("'name'", "required")),
    ({"name": "", "data": {}}, 400, ("'name'",)),
    ({"name": "   "}, 400, ("'name'",)),
    ({"name": 42}, 400, ("'name'",)),
    ({"name": "test/go", "data": [1, 2]}, 400, ("'data' must be an object", "list")),
    ({"name": "test/go", "data": "text"}, 400, ("'data' must be an object", "str")),
    ({"name": "test/go", "data": 3}, 400, ("'data' must be an object",)),
    ({"name": "test/go", "payload": {}}, 400, ("unknown field", "payload")),
    ({"name": "test/go", "user": "bob"}, 400, ("'user'",)),
    ({"name": "test/go", "ts": "yesterday"}, 400, ("'ts'",)),
    ({"name": "test/go", "ts": -1}, 400, ("'ts'",)),
    ({"name": "test/go", "id": 12}, 400, ("'id'",)),
    ({"name": "test/go", "id": "has space"}, 400, ("'id'",)),
    ({"name": "test/go", "v": 2}, 400, ("'v'",)),
    ("just a string", 400, ("must be an object",)),
    ([], 400, ("empty",)),
    ([{"name": "test/go"}, 7], 400, ("event #1", "must be an object")),
    ([{"name": "test/go"}, {"data": {}}], 400, ("event #1", "'name'")),
    ({"name": "test/go", "data": {"blob": BIG}}, 413, ("bytes", "limit", str(512 * 1024))),
    ([{"name": "test/go"}, {"name": "test/go", "data": {"blob": BIG}}], 413, ("event #1", str(512 * 1024))),
    ([{"name": "test/go"}] * 5001, 413, ("5001", "5000")),
    ({"name": "test/\u0000go"}, 400, ("'name' contains the control character U+0000",)),
    ({"name": "test/go\n"}, 400, ("U+000A",)),
    ({"name": "test/go", "ts": 2 ** 63}, 400, ("'ts'", "2^63-1")),
    ({"name": "test/go", "data": DEEP}, 400, ("'data' nests deeper than 100 levels",)),
    ({"name": "test/go", "user": DEEP}, 400, ("'user' nests deeper than 100 levels",)),
], ids=["no-name", "empty-name", "blank-name", "name-not-string", "data-list", "data-string", "data-number",
        "unknown-field", "user-not-object", "ts-string", "ts-negative", "id-number", "id-bad-chars",
        "v-number", "not-an-object", "empty-array", "array-item-not-object", "array-item-no-name",
        "event-too-large", "array-event-too-large", "too-many-events", "name-nul", "name-newline", "ts-2-63",
        "data-too-deep", "user-too-deep"])
async def test_invalid_events_are_rejected_with_a_message_naming_the_problem(
        stepflow: RunningServer, http: aiohttp.ClientSession, body: Any, status: int,
        needles: tuple[str, ...]) -> None:
    got_status, got = await post_events(http, stepflow, body)
    assert_error(got_status, got, status, *needles)
    _, events_runs = await get(http, stepflow, "/v1/runs")
    assert events_runs["data"] == []


@pytest.mark.parametrize(("raw", "needles"), [
    (b"", ("empty",)),
    (b"  \n ", ("empty",)),
    (b"{\"name\": \"test/go\"", ("not valid JSON",)),
    (b"name=test/go", ("not valid JSON",)),
    (b"{\"name\": \"test/go\", \"data\": {\"n\": 1e400}}", ("not valid JSON",)),
    (b"{\"name\": \"test/go\", \"ts\": 36893488147419103237}", ("'ts'", "2^63-1")),
], ids=["empty", "whitespace", "truncated", "form-encoded", "infinite-number", "integer-beyond-64-bits"])
async def test_bodies_that_are_not_json_get_400(stepflow: RunningServer, http: aiohttp.ClientSession,
                                                raw: bytes, needles: tuple[str, ...]) -> None:
    status, body = await post_events(http, stepflow, raw, raw=True)
    assert_error(status, body, 400, *needles)
    assert body["code"] == "invalid_request"


async def test_limits_are_inclusive(stepflow: RunningServer, http: aiohttp.ClientSession) -> None:
    # exactly 5,000 events in one request are fine
    status, body = await post_events(http, stepflow, [{"name": "test/many", "data": {"i": i}} for i in range(5000)])
    assert status == 200, body
    assert len(body["ids"]) == 5000 and len(set(body["ids"])) == 5000

    # one event of exactly 512 KiB (encoded) is fine, one byte more is not
    envelope = codec.dumps({"name": "test/big", "data": {"blob": ""}})
    exact = {"name": "test/big", "data": {"blob": "y" * (512 * 1024 - len(envelope))}}
    assert len(codec.dumps(exact)) == 512 * 1024
    status, body = await post_events(http, stepflow, exact)
    assert status == 200, body
    status, body = await post_events(http, stepflow, [exact])
    assert status == 200, body
    over = {"name": "test/big", "data": {"blob": "y" * (512 * 1024 - len(envelope) + 1)}}
    status, body = await post_events(http, stepflow, over)
    assert_error(status, body, 413, "limit")
    status, body = await post_events(http, stepflow, [exact, over])
    assert_error(status, body, 413, "event #1")


async def test_the_size_limit_measures_the_event_not_the_whitespace_around_it(
        stepflow: RunningServer, http: aiohttp.ClientSession) -> None:
    # ~500 KiB of event, pretty-printed with 20 KB of indentation: the event is under the limit, the body over
    event = {"name": "test/pretty", "data": {"blob": "p" * (500 * 1024)}}
    assert len(codec.dumps(event)) < 512 * 1024
    raw = b'{"name": "test/pretty",' + b" " * 20_000 + b'"data": ' + codec.dumps(event["data"]) + b"}"
    assert len(raw) > 512 * 1024
    status, body = await post_events(http, stepflow, raw, raw=True)
    assert status == 200, body
    # the same event is judged the same inside an array
    status, body = await post_events(http, stepflow, b"[" + raw + b"]", raw=True)
    assert status == 200, body


async def test_a_request_over_the_server_limit_gets_413(stepflow_factory: ServerFactory,
                                                        http: aiohttp.ClientSession) -> None:
    server = await stepflow_factory(settings=ServerSettings(dev=True, max_request_bytes=1024 * 1024))
    events = [{"name": "test/go", "data": {"blob": "z" * 100_000}} for _ in range(15)]  # ~1.5 MiB in all
    status, body = await post_events(http, server, events)
    assert_error(status, body, 413, str(1024 * 1024))
    _, runs = await get(http, server, "/v1/runs")
    assert runs["data"] == []


@pytest.mark.parametrize("bad", [
    {"name": "test/go", "data": ["not", "an", "object"]},
    {"name": "test/go", "data": {"blob": BIG}},
    {"data": {}},
    {"name": "test/go", "surprise": True},
], ids=["bad-data", "too-large", "no-name", "unknown-field"])
async def test_one_bad_event_rejects_the_whole_request_and_stores_nothing(
        stepflow: RunningServer, step_server: StepServer, http: aiohttp.ClientSession, bad: dict[str, Any]) -> None:
    path = await one_step_function(stepflow, step_server)
    good: list[dict[str, Any]] = [{"id": f"good-{i}", "name": "test/go", "data": {"i": i}} for i in range(3)]
    status, body = await post_events(http, stepflow, [good[0], good[1], bad, good[2]])
    assert status in (400, 413)
    assert_error(status, body, status, "event #2")

    for event in good:
        status, body = await get(http, stepflow, f"/v1/events/{event['id']}")
        assert_rest_error(status, body, 404, event["id"])
        status, body = await get(http, stepflow, f"/v1/events/{event['id']}/runs")
        assert status == 404
    _, runs = await get(http, stepflow, "/v1/runs")
    assert runs["data"] == []
    assert path not in step_server.calls

    # the same good events, sent again on their own, are new: nothing of the rejected request lingers
    status, body = await post_events(http, stepflow, good)
    assert status == 200 and body["ids"] == ["good-0", "good-1", "good-2"]
    for event in good:
        _, runs = await get(http, stepflow, f"/v1/events/{event['id']}/runs")
        assert len(runs["data"]) == 1


# --- event keys --------------------------------------------------------------------------------------------


async def test_event_key_is_required_when_configured(stepflow_factory: ServerFactory, step_server: StepServer,
                                                     http: aiohttp.ClientSession) -> None:
    server = await stepflow_factory(settings=ServerSettings(event_keys=["k"], signing_keys=["s"], dev=False))
    await one_step_function(server, step_server)
    for wrong in ("wrong", "K", "k2", "dev"):
        status, body = await post_events(http, server, {"id": f"ev-{wrong}", "name": "test/go"}, key=wrong)
        assert_error(status, body, 401, "event key")
        assert body["code"] == "unauthorized"
        status, _ = await get(http, server, f"/v1/events/ev-{wrong}")
        assert status == 404  # a refused event is not stored

    status, body = await post_events(http, server, {"id": "ev-ok", "name": "test/go"}, key="k")
    assert status == 200 and body["ids"] == ["ev-ok"]
    assert await server.client.wait_for_output("ev-ok", timeout=10) == {"ok": True}


async def test_a_production_server_without_event_keys_accepts_no_event(stepflow_factory: ServerFactory,
                                                                       http: aiohttp.ClientSession) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["s"], dev=False))
    status, body = await post_events(http, server, {"name": "test/go"}, key="anything")
    assert_error(status, body, 401)


async def test_rest_signing_key_is_not_an_event_key(stepflow_factory: ServerFactory,
                                                    http: aiohttp.ClientSession) -> None:
    server = await stepflow_factory(settings=ServerSettings(event_keys=["k"], signing_keys=["s"], dev=False))
    status, body = await post_events(http, server, {"name": "test/go"}, key="s")
    assert_error(status, body, 401)


async def test_only_post_is_allowed_on_the_event_endpoint(stepflow: RunningServer,
                                                          http: aiohttp.ClientSession) -> None:
    async with http.get(f"{stepflow.url}/e/dev") as resp:
        assert resp.status == 405
        body = codec.loads(await resp.read())
    assert_error(405, body, 405, "GET")
