"""stepflow end-to-end test app on the official Inngest Python SDK (pip `inngest`, pinned), served by FastAPI
under uvicorn. The same functions as js_common/functions.js (tests/test_inngest_sdks.py drives them).

Configuration comes from the environment, as in any Inngest app: PORT, APP_ID, INNGEST_DEV, INNGEST_BASE_URL,
INNGEST_API_BASE_URL, INNGEST_EVENT_API_BASE_URL, INNGEST_SIGNING_KEY, INNGEST_EVENT_KEY.

Event names are "<app id>/<name>". Every step records its executions in memory (per "<token>:<step>"), served
at GET /counts?token=T, so the tests can assert that a step ran exactly N times.

    PORT=8000 INNGEST_DEV=http://127.0.0.1:8288 python tests/inngest_apps/python_app.py
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any

import fastapi
import inngest
import inngest.fast_api
import uvicorn

LABEL = "python"
APP_ID = os.environ.get("APP_ID", "e2e-python")
client = inngest.Inngest(app_id=APP_ID, logger=logging.getLogger("e2e-python"))

_counts: dict[str, list[int]] = {}


def hit(token: str, step: str) -> int:
    times = _counts.setdefault(f"{token}:{step}", [])
    times.append(int(time.time() * 1000))
    return len(times)


def ev(name: str) -> str:
    return f"{APP_ID}/{name}"


# (a) three step.run in sequence
@client.create_function(fn_id="three-steps", trigger=inngest.TriggerEvent(event=ev("three-steps")))
async def three_steps(ctx: inngest.Context) -> dict[str, Any]:
    t = ctx.event.data["token"]
    x = ctx.event.data["x"]

    def add_one() -> int:
        hit(t, "add-one")
        return x + 1

    a = await ctx.step.run("add-one", add_one)

    def double() -> int:
        hit(t, "double")
        return a * 2

    b = await ctx.step.run("double", double)

    def add_three() -> int:
        hit(t, "add-three")
        return b + 3

    c = await ctx.step.run("add-three", add_three)
    return {"a": a, "b": b, "c": c, "sdk": LABEL}


# (b) a durable sleep between two steps
@client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event=ev("sleeper")))
async def sleeper(ctx: inngest.Context) -> dict[str, Any]:
    t = ctx.event.data["token"]

    def now(name: str) -> int:
        hit(t, name)
        return int(time.time() * 1000)

    before = await ctx.step.run("before", now, "before")
    await ctx.step.sleep("nap", datetime.timedelta(seconds=2))
    after = await ctx.step.run("after", now, "after")
    return {"before": before, "after": after}


# (c) wait_for_event with an `if` expression
@client.create_function(fn_id="wait-match", trigger=inngest.TriggerEvent(event=ev("wait-match")))
async def wait_match(ctx: inngest.Context) -> dict[str, Any]:
    def ready() -> bool:
        hit(ctx.event.data["token"], "ready")
        return True

    await ctx.step.run("ready", ready)
    approval = await ctx.step.wait_for_event(
        "wait-approval", event=ev("approved"), timeout=datetime.timedelta(seconds=30),
        if_exp="async.data.order == event.data.order")
    return {"approval": approval.to_dict() if approval is not None else None}


# (d) wait_for_event that times out
@client.create_function(fn_id="wait-timeout", trigger=inngest.TriggerEvent(event=ev("wait-timeout")))
async def wait_timeout(ctx: inngest.Context) -> dict[str, Any]:
    got = await ctx.step.wait_for_event("wait-never", event=ev("never-sent"),
                                        timeout=datetime.timedelta(seconds=1))
    return {"got": got.to_dict() if got is not None else None, "timedOut": got is None}


# (e) invoke another function of the same app
@client.create_function(fn_id="invoke-child", trigger=inngest.TriggerEvent(event=ev("invoke-child")))
async def invoke_child(ctx: inngest.Context) -> dict[str, Any]:
    n = ctx.event.data["n"]

    async def double_it() -> int:
        return n * 2

    return {"doubled": await ctx.step.run("double-it", double_it)}


@client.create_function(fn_id="invoke-parent", trigger=inngest.TriggerEvent(event=ev("invoke-parent")))
async def invoke_parent(ctx: inngest.Context) -> dict[str, Any]:
    child = await ctx.step.invoke("call-child", function=invoke_child, data={"n": ctx.event.data["n"]})
    return {"child": child}


# (f) send_event whose event triggers another function
@client.create_function(fn_id="send-child", trigger=inngest.TriggerEvent(event=ev("sent-by-parent")))
async def send_child(ctx: inngest.Context) -> dict[str, Any]:
    def got() -> bool:
        hit(ctx.event.data["token"], "send-child")
        return True

    await ctx.step.run("got", got)
    return {"got": ctx.event.data["token"]}


@client.create_function(fn_id="send-parent", trigger=inngest.TriggerEvent(event=ev("send-parent")))
async def send_parent(ctx: inngest.Context) -> dict[str, Any]:
    ids = await ctx.step.send_event(
        "send-it", inngest.Event(name=ev("sent-by-parent"), data={"token": ctx.event.data["token"]}))
    return {"ids": ids}


# (g) parallel steps
@client.create_function(fn_id="parallel", trigger=inngest.TriggerEvent(event=ev("parallel")))
async def parallel(ctx: inngest.Context) -> dict[str, Any]:
    t = ctx.event.data["token"]

    def part(step_id: str) -> str:
        hit(t, step_id)
        return step_id.upper()

    parts = await ctx.group.parallel(tuple(
        (lambda sid=sid: ctx.step.run(sid, part, sid)) for sid in ("p-a", "p-b", "p-c")))

    def join() -> str:
        hit(t, "p-join")
        return "+".join(parts)

    joined = await ctx.step.run("p-join", join)
    return {"parts": list(parts), "joined": joined}


# (h) a step that always raises, retries=1 -> 2 attempts, then the run fails
@client.create_function(fn_id="always-fails", retries=1, trigger=inngest.TriggerEvent(event=ev("always-fails")))
async def always_fails(ctx: inngest.Context) -> str:
    def boom() -> None:
        n = hit(ctx.event.data["token"], "boom")
        raise ValueError(f"boom: always fails (attempt {n})")

    await ctx.step.run("boom", boom)
    return "unreachable"


# (i) NonRetriableError -> 1 attempt
@client.create_function(fn_id="non-retriable", retries=3, trigger=inngest.TriggerEvent(event=ev("non-retriable")))
async def non_retriable(ctx: inngest.Context) -> str:
    def refuse() -> None:
        hit(ctx.event.data["token"], "refuse")
        raise inngest.NonRetriableError("nope: not retriable")

    await ctx.step.run("refuse", refuse)
    return "unreachable"


# (j) RetryAfterError: retried no earlier than 1 s later, succeeds on the 2nd attempt
@client.create_function(fn_id="retry-after", retries=2, trigger=inngest.TriggerEvent(event=ev("retry-after")))
async def retry_after(ctx: inngest.Context) -> dict[str, Any]:
    def flaky() -> str:
        n = hit(ctx.event.data["token"], "flaky")
        if n == 1:
            raise inngest.RetryAfterError("not yet: retry later", datetime.timedelta(seconds=1))
        return f"ok on attempt {n}"

    return {"value": await ctx.step.run("flaky", flaky)}


# (k) cancel=[...]: cancelled by an event while it sleeps
@client.create_function(
    fn_id="cancellable", trigger=inngest.TriggerEvent(event=ev("cancellable")),
    cancel=[inngest.Cancel(event=ev("cancel"), if_exp="async.data.token == event.data.token")])
async def cancellable(ctx: inngest.Context) -> str:
    t = ctx.event.data["token"]

    def mark(name: str) -> bool:
        hit(t, name)
        return True

    await ctx.step.run("started", mark, "started")
    await ctx.step.sleep("long-nap", datetime.timedelta(seconds=60))
    await ctx.step.run("after-nap", mark, "after-nap")
    return "not cancelled"


# (l) cron: every 2 seconds (stepflow reads a sixth field as seconds)
@client.create_function(fn_id="cron-tick",
                        trigger=inngest.TriggerCron(cron=os.environ.get("CRON_SCHEDULE", "*/2 * * * * *")))
async def cron_tick(ctx: inngest.Context) -> dict[str, Any]:
    def tick() -> int:
        hit("cron", "tick")
        return int(time.time() * 1000)

    return {"tick": await ctx.step.run("tick", tick)}


# cross-SDK: invoke a function of a stepflow-SDK app (function id "<app>-<fn>": sf-cross-double)
@client.create_function(fn_id="cross-invoke-stepflow", trigger=inngest.TriggerEvent(event=ev("cross-invoke")))
async def cross_invoke(ctx: inngest.Context) -> dict[str, Any]:
    result = await ctx.step.invoke_by_id("call-stepflow", app_id="sf-cross", function_id="double",
                                         data={"n": ctx.event.data["n"]})
    return {"via": LABEL, "result": result}


# (m) on_failure: retries=0, the function raises; the handler (registered as "<app>-fails-notify-failure",
# triggered by inngest/function.failed) reports what the failure event told it
async def fails_notify_failure(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data
    original = data.get("event") or {}
    token = (original.get("data") or {}).get("token", "?")
    hit(token, "on-failure")
    error = data.get("error") or {}
    return {"event_name": ctx.event.name, "function_id": data.get("function_id"), "run_id": data.get("run_id"),
            "message": error.get("message"), "error_name": error.get("name"), "token": token,
            "original_event": original.get("name")}


@client.create_function(fn_id="fails-notify", retries=0, on_failure=fails_notify_failure,
                        trigger=inngest.TriggerEvent(event=ev("fails-notify")))
async def fails_notify(ctx: inngest.Context) -> str:
    t = ctx.event.data["token"]
    hit(t, "fails-notify")
    raise RuntimeError(f"exploded on purpose: {t}")


# (o) sleep_until a time given in the event (ms since the epoch)
@client.create_function(fn_id="sleep-until", trigger=inngest.TriggerEvent(event=ev("sleep-until")))
async def sleep_until(ctx: inngest.Context) -> dict[str, Any]:
    t = ctx.event.data["token"]
    until = ctx.event.data["until"]
    await ctx.step.sleep_until("nap-until", datetime.datetime.fromtimestamp(until / 1000, tz=datetime.UTC))

    def after() -> int:
        hit(t, "after")
        return int(time.time() * 1000)

    return {"until": until, "after": await ctx.step.run("after", after)}


# (p) a step that raises on its first attempt and succeeds on the second (retries=1: two attempts in all)
@client.create_function(fn_id="flaky-once", retries=1, trigger=inngest.TriggerEvent(event=ev("flaky-once")))
async def flaky_once(ctx: inngest.Context) -> dict[str, Any]:
    def flaky() -> str:
        n = hit(ctx.event.data["token"], "flaky")
        if n == 1:
            raise ValueError("flaky: the first attempt fails")
        return f"ok on attempt {n}"

    return {"value": await ctx.step.run("flaky", flaky)}


# (q) flow control: one run at a time per token (concurrency keyed by CEL), each step taking 300 ms
@client.create_function(fn_id="one-at-a-time", trigger=inngest.TriggerEvent(event=ev("one-at-a-time")),
                        concurrency=[inngest.Concurrency(limit=1, key="event.data.token")],
                        throttle=inngest.Throttle(limit=100, period=datetime.timedelta(seconds=1)))
async def one_at_a_time(ctx: inngest.Context) -> dict[str, Any]:
    t = ctx.event.data["token"]

    async def work() -> int:
        hit(t, "start")
        await asyncio.sleep(0.3)
        return hit(t, "end")

    return {"n": await ctx.step.run("work", work)}


# (r) batching: three events make one run, which sees them all in ctx.events
@client.create_function(fn_id="batched", trigger=inngest.TriggerEvent(event=ev("batched")),
                        batch_events=inngest.Batch(max_size=3, timeout=datetime.timedelta(seconds=5)))
async def batched(ctx: inngest.Context) -> dict[str, Any]:
    return {"ns": [e.data["n"] for e in ctx.events]}


FUNCTIONS = [three_steps, sleeper, wait_match, wait_timeout, invoke_child, invoke_parent, send_child, send_parent,
             parallel, always_fails, non_retriable, retry_after, cancellable, cron_tick, cross_invoke, fails_notify,
             sleep_until, flaky_once, one_at_a_time, batched]

api = fastapi.FastAPI()
inngest.fast_api.serve(api, client, FUNCTIONS)


@api.get("/counts")
async def counts(token: str) -> dict[str, Any]:
    prefix = f"{token}:"
    return {key[len(prefix):]: {"count": len(times), "times": times}
            for key, times in _counts.items() if key.startswith(prefix)}


# (n) send an event with a client of its own whose event key is `key` (e.g. a wrong one); answers what the SDK
# returned or raised
@api.get("/send-test")
async def send_test(key: str, name: str) -> dict[str, Any]:
    sender = inngest.Inngest(app_id=APP_ID, event_key=key, logger=logging.getLogger("e2e-python-send"))
    try:
        ids = await sender.send(inngest.Event(name=name, data={"via": "send-test"}))
    except Exception as exc:  # noqa: BLE001 - the test asserts on the class
        return {"ok": False, "error_class": type(exc).__name__, "error_module": type(exc).__module__,
                "message": str(exc), "mro": [c.__name__ for c in type(exc).__mro__]}
    return {"ok": True, "ids": ids}


@api.get("/health")
async def health() -> dict[str, Any]:
    return {"ok": True, "sdk": LABEL}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(api, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_level="warning")
