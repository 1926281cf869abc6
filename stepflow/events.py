"""Events as they arrive: validated completely before anything is stored (a bad request stores nothing)."""

from __future__ import annotations

from typing import Any

from stepflow import codec
from stepflow.errors import InvalidRequestError, PayloadTooLargeError
from stepflow.ids import control_character, is_valid_event_id, new_ulid, now_ms
from stepflow.store.records import EventRecord

MAX_EVENT_BYTES = 512 * 1024
MAX_EVENTS_PER_REQUEST = 5000
# How deep `data` and `user` may nest. The event travels inside other documents (a call's Input, a wait's memo,
# the failure event of a run) and JSON encoders stop at 254 levels: an event accepted deeper than this could
# never be delivered, and its run would fail later for a reason the sender never sees.
MAX_DATA_DEPTH = 100
_EVENT_KEYS = {"id", "name", "data", "user", "ts", "v"}


def parse_event_body(raw: bytes, *, max_event_bytes: int = MAX_EVENT_BYTES,
                     max_events: int = MAX_EVENTS_PER_REQUEST) -> list[EventRecord]:
    """Decode and validate a `POST /e/{key}` body: one event object or an array of them."""
    if not raw.strip():
        raise InvalidRequestError("the request body is empty; send an event object or an array of events")
    try:
        document = codec.loads(raw)
    except codec.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from exc
    items = document if isinstance(document, list) else [document]
    if not items:
        raise InvalidRequestError("the array of events is empty")
    if len(items) > max_events:
        raise PayloadTooLargeError(f"{len(items)} events in one request; the limit is {max_events}")
    single = not isinstance(document, list)
    received = now_ms()
    # Every event is measured as it is stored (compact JSON), alone or in an array: the whitespace a sender
    # formats its body with must not decide whether the same event is accepted.
    return [validate_event(item, index=None if single else i, received_at=received,
                           max_event_bytes=max_event_bytes)
            for i, item in enumerate(items)]


def validate_event(item: Any, *, index: int | None, received_at: int,
                   max_event_bytes: int | None = MAX_EVENT_BYTES) -> EventRecord:
    where = "event" if index is None else f"event #{index}"
    if not isinstance(item, dict):
        raise InvalidRequestError(f"{where} must be an object with a 'name', got {type(item).__name__}")
    unknown = set(item) - _EVENT_KEYS
    if unknown:
        raise InvalidRequestError(f"{where}: unknown field(s) {sorted(unknown)}; events have "
                                  "'name', 'data', and optionally 'id', 'user', 'ts', 'v'")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequestError(f"{where}: 'name' is required and must be a non-empty string")
    if len(name) > 256:
        raise InvalidRequestError(f"{where}: 'name' is longer than 256 characters")
    control = control_character(name)
    if control is not None:
        raise InvalidRequestError(f"{where}: 'name' contains the control character {control}; event names are "
                                  "printable text")
    data = item.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{where}: 'data' must be an object, got {type(data).__name__}")
    user = item.get("user")
    if user is not None and not isinstance(user, dict):
        raise InvalidRequestError(f"{where}: 'user' must be an object")
    ts = item.get("ts")
    if ts is None:
        ts = received_at
    elif not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2 ** 63:
        raise InvalidRequestError(f"{where}: 'ts' must be milliseconds since the epoch (an integer from 0 to "
                                  "2^63-1)")
    v = item.get("v")
    if v is not None and not isinstance(v, str):
        raise InvalidRequestError(f"{where}: 'v' must be a string")
    event_id = item.get("id")
    if event_id is None or event_id == "":
        event_id = new_ulid()
    elif not isinstance(event_id, str) or not is_valid_event_id(event_id):
        raise InvalidRequestError(f"{where}: 'id' must be 1-128 characters of letters, digits, '.', '_', ':' "
                                  "or '-'")
    for field, value in (("data", data), ("user", user)):
        if depth(value) > MAX_DATA_DEPTH:
            raise InvalidRequestError(f"{where}: '{field}' nests deeper than {MAX_DATA_DEPTH} levels of objects "
                                      "and arrays; flatten it (the event could not be delivered to a function)")
    if max_event_bytes is not None:
        size = len(codec.dumps(item))
        if size > max_event_bytes:
            raise PayloadTooLargeError(f"{where} is {size} bytes; the limit is {max_event_bytes} bytes per event")
    return EventRecord(id=event_id, name=name, data=data, ts=ts, received_at=received_at, user=user, v=v)


def depth(value: Any) -> int:
    """How many levels of objects and arrays `value` nests (0 for a scalar); iterative, so any depth is safe."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_DATA_DEPTH:
            return deepest  # enough to refuse; no need to walk the rest
        stack.extend((child, level) for child in children)
    return deepest
