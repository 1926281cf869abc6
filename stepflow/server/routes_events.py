"""`POST /e/{event_key}`: the event API."""

from __future__ import annotations

from aiohttp import web

from stepflow.errors import UnauthorizedError
from stepflow.events import parse_event_body
from stepflow.observability.tracing import parse_traceparent
from stepflow.server.app import ENGINE_KEY, SETTINGS_KEY, _key_matches, json_response, read_body


async def send_events(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    if settings.event_auth_required and not _key_matches(request.match_info["event_key"], settings.event_keys):
        raise UnauthorizedError("unknown event key; send events to /e/<event key>")
    events = parse_event_body(await read_body(request))
    # a sender's trace context: the runs these events start are children of its span
    ids = await request.app[ENGINE_KEY].ingest(events, trace=parse_traceparent(request.headers.get("traceparent")))
    return json_response({"ids": ids, "status": 200})


def setup(app: web.Application) -> None:
    app.router.add_post("/e/{event_key}", send_events)
