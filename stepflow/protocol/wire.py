"""The SDK wire protocol, in one place: opcodes, header names, the call Input, the memo format, the call URL.

It is the public Inngest SDK protocol (the official SDKs are served by stepflow unchanged) plus two stepflow
ops. The engine builds calls with it, the SDK and the durable endpoints read and answer them with it.

A call is `POST <app url>?fnId=<function id>&stepId=<hashed step id | "step">` with the Input

    {"event", "events", "steps": {<hashed id>: {"data": …} | {"error": {"name", "message", "stack"}}},
     "ctx": {"run_id", "attempt", "max_attempts", "disable_immediate_execution", "use_api",
             "stack": {"stack": [<hashed ids in the order they ended>], "current": n}, "fn_id", "step_id", …},
     "use_api": false, "version": 2}

and the answer is 200 + the function's output, 206 + a list of ops, or an error status (5xx retried unless
`X-Inngest-No-Retry: true`, 4xx never; `Retry-After` in seconds, as an HTTP date or as an ISO-8601 time).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# --- headers -------------------------------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Inngest-Signature"
NO_RETRY_HEADER = "X-Inngest-No-Retry"
RETRY_AFTER_HEADER = "Retry-After"
REQUEST_VERSION_HEADER = "X-Inngest-Req-Version"
SERVER_KIND_HEADER = "X-Inngest-Server-Kind"
EXPECTED_SERVER_KIND_HEADER = "X-Inngest-Expected-Server-Kind"
STEPFLOW_SERVER_HEADER = "X-Stepflow-Server"   # `stepflow dev -u`: where a dev-mode stepflow SDK app syncs
RESUME_HEADER = "X-Stepflow-Resume"            # the engine calling a durable endpoint again
RUN_ID_HEADER = "X-Run-ID"                     # a durable endpoint's answers: the run the request became
REQUEST_EVENT = "http/request"                 # the event of a durable endpoint's run (the request)

UNTARGETED = "step"        # `stepId` of a call that targets no step in particular
# The executor request version: -1 lets the SDK choose (the JS SDK v3 picks 1, v4 picks 2, and says so in its
# answer's X-Inngest-Req-Version); later calls echo the SDK's choice, as Inngest does. 0 would select the
# JS SDK's legacy format.
SDK_CHOOSES_VERSION = -1


class Op(StrEnum):
    """What an SDK can answer in a 206, one op per step it reached."""

    STEP_RUN = "StepRun"              # a step ran inline: `data` is its result
    STEP_ERROR = "StepError"          # a step's attempt failed: retry it while attempts remain
    STEP_FAILED = "StepFailed"        # a step failed for good (its last attempt): memoize the error
    STEP_PLANNED = "StepPlanned"      # run this step in a call of its own (parallel steps)
    SLEEP = "Sleep"                   # `opts.duration`, or `name` = a duration ("3s") or an ISO time
    WAIT_FOR_EVENT = "WaitForEvent"   # `name` or `opts.event`; `opts.timeout`, `opts.if`
    INVOKE_FUNCTION = "InvokeFunction"  # `opts.function_id` ("<app>-<fn>"), `opts.payload`, `opts.timeout`
    RUN_COMPLETE = "RunComplete"      # the function returned after inline steps: `data` is its output
    STEP_NOT_FOUND = "StepNotFound"   # a targeted call did not reach its step
    SEND_EVENT = "SendEvent"          # stepflow: `opts.events`, sent by the engine in the step's transaction
    RUN_STEP = "RunStep"              # stepflow: run this step on another runtime (`opts.runtime`)
    AI_GATEWAY = "AIGateway"          # official SDKs: an inference request made by the server
    GATEWAY = "Gateway"               # official SDKs: an HTTP request made by the server
    WAIT_FOR_SIGNAL = "WaitForSignal"  # JS SDK v4: wait for a signal sent through Inngest's API
    DEFER_ADD = "DeferAdd"            # JS SDK v4: work deferred past the run
    DEFER_ABORT = "DeferAbort"
    DISCOVERY_REQUEST = "DiscoveryRequest"  # JS SDK checkpointing: call the function again to go on
    STEP = "Step"                     # the JS SDK's legacy (executor v0) name of StepRun


# Ops of the official SDKs asking the server for something stepflow does not provide: the step fails with a
# message saying what to do instead, and the function sees it as a failed step (it may catch it).
UNSUPPORTED_OPS = {
    Op.AI_GATEWAY: "step.ai.infer asks the server to call the model; call it inside step.run",
    Op.GATEWAY: "step.fetch asks the server to make the request; make it inside step.run",
    Op.WAIT_FOR_SIGNAL: "step.waitForSignal needs Inngest's signal API; wait for an event instead "
                        "(step.waitForEvent)",
    Op.DEFER_ADD: "deferred steps are not supported; run the work in a step or send an event",
    Op.DEFER_ABORT: "deferred steps are not supported; run the work in a step or send an event",
}


# --- step ids and memos --------------------------------------------------------------------------------------


def hash_step_id(step_id: str) -> str:
    """Steps are keyed by the SHA-1 of their id (`"id"`, then `"id:1"`, `"id:2"` for repeats)."""
    return hashlib.sha1(step_id.encode()).hexdigest()


def memo_error(error: dict[str, Any] | None) -> dict[str, Any]:
    """A failed step's memo error. The official SDKs read it strictly: `name` and `message` must be strings
    and `stack` a string or null, or the Python SDK hands the whole memo to the function as *data*."""
    out = dict(error or {})
    out["name"] = str(out.get("name") or out.get("code") or "Error")
    out["message"] = str(out.get("message") or "")
    stack = out.get("stack")
    if stack is not None and not isinstance(stack, str):
        out["stack"] = str(stack)
    return out


def data_memo(output: Any) -> dict[str, Any]:
    """A completed step's memo: stored outputs are `{"data": …}` already; anything else is wrapped."""
    if isinstance(output, dict) and set(output) <= {"data"}:
        return output if "data" in output else {"data": None}
    return {"data": output}


# --- the call ------------------------------------------------------------------------------------------------


def call_input(*, event: dict[str, Any], steps: dict[str, Any], run_id: str, attempt: int, max_attempts: int,
               stack: list[str], target: str | None, version: int = SDK_CHOOSES_VERSION,
               extra_ctx: dict[str, Any] | None = None,
               events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Input of one call, with every field the official SDKs validate.

    `events` is a batch run's events (the first is `event`); otherwise `[event]`.
    `use_api` is false: the memos and events are always sent whole (true would make the SDK fetch them from
    Inngest Cloud's API). `disable_immediate_execution` is false: the SDK may run a lone new step inline.
    """
    ctx: dict[str, Any] = {
        "run_id": run_id, "attempt": attempt, "max_attempts": max_attempts,
        "step_id": target or UNTARGETED, "disable_immediate_execution": False, "use_api": False,
        "stack": {"stack": stack, "current": len(stack)},
    }
    if extra_ctx:
        ctx.update(extra_ctx)
    return {"event": event, "events": events or [event], "steps": steps, "ctx": ctx, "use_api": False,
            "version": version}


@lru_cache(maxsize=4096)  # one URL per function and target: built once, not on every call
def call_url(url: str, fn_id: str, target: str | None) -> str:
    """The app's URL with `fnId` and `stepId` set: the official SDKs read the targeted step only from the
    query (stepflow's SDK reads `ctx.step_id` too)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("fnId", "stepId")]
    query += [("fnId", fn_id), ("stepId", target or UNTARGETED)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def call_headers(version: int) -> dict[str, str]:
    """Headers sent with a call besides the signature: the request version, once the SDK has chosen one."""
    return {REQUEST_VERSION_HEADER: str(version)} if version != SDK_CHOOSES_VERSION else {}


def answered_version(headers: dict[str, str] | None) -> int | None:
    """The executor request version an SDK answered with, if it said one."""
    value = (headers or {}).get(REQUEST_VERSION_HEADER.lower(), "")
    return int(value) if value.isascii() and value.isdigit() else None


def input_problem(document: Any) -> str | None:
    """Why a call's Input is not one (wrong JSON types), or None. An SDK answers such a call 400, not-retried."""
    if not isinstance(document, dict):
        return "the Input must be an object {event, events, steps, ctx}"
    expected: dict[str, tuple[type, ...]] = {"event": (dict,), "events": (list,), "steps": (dict,), "ctx": (dict,)}
    for field, types in expected.items():
        if document.get(field) is not None and not isinstance(document[field], types):
            return f"the Input's '{field}' must be {'an object' if types == (dict,) else 'a list'}, got " \
                   f"{type(document[field]).__name__}"
    if any(not isinstance(event, dict) for event in document.get("events") or []):
        return "the Input's 'events' must be a list of objects"
    ctx = document.get("ctx") or {}
    checks: dict[str, tuple[type, ...]] = {"run_id": (str,), "attempt": (int,), "max_attempts": (int,),
                                           "step_id": (str,), "stack": (dict, list), "function_id": (str,),
                                           "app_id": (str,), "step_names": (dict,), "max_output_bytes": (int,)}
    for field, types in checks.items():
        value = ctx.get(field)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return f"the Input's 'ctx.{field}' has the wrong type ({type(value).__name__})"
    stack = ctx.get("stack")
    ids = stack.get("stack") if isinstance(stack, dict) else stack
    if ids is not None and (not isinstance(ids, list) or any(not isinstance(i, str) for i in ids)):
        return "the Input's 'ctx.stack' must list step ids (strings)"
    return None
