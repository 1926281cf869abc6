"""Reading a sync (`POST /fn/register`) in either of the two formats it arrives in.

- stepflow's own: `{"app_id", "url", "functions": [<function definition>]}` (docs/sdk.md).
- Inngest's SynchronizeRequest, sent by the official SDKs: `{"url", "deployType", "framework", "appName"
  (or "appname"), "functions": [{"id", "name", "triggers", "steps": {"step": {"runtime": {"type": "http",
  "url": "…?fnId=…&stepId=step"}, "retries": {"attempts": N}}}, "cancel", …}], "sdk", "v"}`.

Both become stepflow function definitions, checked by the same loader; Inngest's flow-control options are
translated to stepflow's (`rateLimit` → `rate_limit`, concurrency scope `env`/`account` → `all`). An option
stepflow does not carry out yet is refused with a message naming it: a function registered with a limit that is
then not enforced would be worse than no function at all.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from stepflow.definitions import FunctionDef, parse_function
from stepflow.errors import DefinitionError, InvalidRequestError
from stepflow.ids import control_character

# SynchronizeRequest function fields stepflow reads
_SUPPORTED_FIELDS = {"id", "name", "triggers", "steps", "cancel", "idempotency", "timeouts"}
# Flow control: Inngest's names → stepflow's (stepflow/definitions/flow_control.py checks and carries them out,
# or refuses the ones it does not carry out yet, naming them)
_FLOW_FIELDS = {"concurrency": "concurrency", "throttle": "throttle", "rateLimit": "rate_limit",
                "debounce": "debounce", "batchEvents": "batch_events", "priority": "priority",
                "singleton": "singleton"}
# Inngest's concurrency scopes: one function's runs, or (env, account) every run on this server sharing the key
_SCOPES = {"fn": "function", "env": "all", "account": "all"}
_IGNORED_FIELDS = {"slug", "appVersion", "description"}  # informational only


@dataclass(slots=True)
class SyncRequest:
    app_id: str
    url: str | None
    functions: list[FunctionDef]
    inngest: bool      # True: the official SDKs' format; answers use their error shape
    sdk: str | None = None


def is_inngest_sync(payload: dict[str, Any]) -> bool:
    return "appName" in payload or "appname" in payload or "deployType" in payload or "framework" in payload


def parse_sync(payload: Any) -> SyncRequest:
    if not isinstance(payload, dict):
        raise InvalidRequestError("expected a JSON object: {\"app_id\", \"url\", \"functions\": [...]} or an Inngest "
                                  "SynchronizeRequest")
    if is_inngest_sync(payload):
        return _parse_inngest(payload)
    app_id = payload.get("app_id")
    if not isinstance(app_id, str) or not app_id or control_character(app_id):
        raise InvalidRequestError("'app_id' must be a non-empty string of printable characters")
    if not isinstance(payload.get("functions"), list):
        raise InvalidRequestError("expected {\"app_id\", \"url\", \"functions\": [...]}")
    source = f"app {app_id} at {payload.get('url')}"
    functions = []
    for config in payload["functions"]:
        fn = parse_function(config, source=source)  # DefinitionError → 400 naming the function and problem
        if fn.app_id != app_id:
            raise DefinitionError(f"belongs to app {fn.app_id!r}, not {app_id!r}", source=source, function=fn.id)
        functions.append(fn)
    url = payload.get("url")
    return SyncRequest(app_id=app_id, url=url if isinstance(url, str) else None, functions=functions,
                       inngest=False)


def _parse_inngest(payload: dict[str, Any]) -> SyncRequest:
    app_id = payload.get("appName", payload.get("appname"))
    if not isinstance(app_id, str) or not app_id.strip():
        raise InvalidRequestError("the SynchronizeRequest has no 'appName': give the Inngest client an app id")
    if control_character(app_id):
        raise InvalidRequestError(f"the app id contains the control character {control_character(app_id)}")
    url = payload.get("url")
    functions_raw = payload.get("functions")
    if functions_raw is None:
        functions_raw = []
    if not isinstance(functions_raw, list):
        raise InvalidRequestError("'functions' must be a list")
    source = f"app {app_id} at {url}"
    functions = []
    seen: set[str] = set()
    for raw in functions_raw:
        fn = parse_function(inngest_function_config(raw, app_id, source), source=source)
        if fn.id in seen:
            raise DefinitionError("declared twice in the same app", source=source, function=fn.id)
        seen.add(fn.id)
        functions.append(fn)
    sdk = payload.get("sdk")
    return SyncRequest(app_id=app_id, url=url if isinstance(url, str) else None, functions=functions,
                       inngest=True, sdk=sdk if isinstance(sdk, str) else None)


def inngest_function_config(raw: Any, app_id: str, source: str) -> dict[str, Any]:
    """One function of a SynchronizeRequest as a stepflow code-function definition."""
    if not isinstance(raw, dict):
        raise DefinitionError(f"each function must be an object, got {type(raw).__name__}", source=source)
    fid = raw.get("id")

    def fail(problem: str) -> DefinitionError:
        return DefinitionError(problem, source=source, function=fid if isinstance(fid, str) else None)

    if not isinstance(fid, str) or not fid:
        raise fail("a function has no 'id'")
    # An SDK may send an option empty (the Python SDK's on_failure function has `"concurrency": []`): unset.
    present = {key for key, value in raw.items() if value is not None and value != [] and value != {}}
    unknown = sorted(present - _SUPPORTED_FIELDS - set(_FLOW_FIELDS) - _IGNORED_FIELDS)
    if unknown:
        raise fail(f"unknown field(s) {unknown} in the SynchronizeRequest; stepflow does not know what they ask for")
    steps = raw.get("steps")
    if not isinstance(steps, dict) or len(steps) != 1:
        raise fail("'steps' must hold exactly one entry (the SDK endpoint), e.g. {\"step\": {\"runtime\": …}}")
    step = next(iter(steps.values()))
    if not isinstance(step, dict):
        raise fail("'steps.step' must be an object")
    runtime = step.get("runtime")
    if not isinstance(runtime, dict) or not isinstance(runtime.get("url"), str):
        raise fail("'steps.step.runtime' must be {\"type\": \"http\", \"url\": …}")
    if runtime.get("type", "http") != "http":
        raise fail(f"runtime type {runtime.get('type')!r} is not supported; the SDK must be served over http")
    config: dict[str, Any] = {"id": fid, "name": raw.get("name") or fid, "app_id": app_id,
                              "runtime": {"type": "http", "url": runtime["url"]}}
    retries = step.get("retries")
    if retries is not None:
        # Inngest's `retries: {attempts: N}` counts retries (N + 1 attempts in all), as the SDKs' `retries=N`.
        count = retries.get("attempts") if isinstance(retries, dict) else retries
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 100:
            raise fail(f"'retries.attempts' must be a whole number from 0 to 100, got {count!r}")
        config["retries"] = count
    config["triggers"] = _triggers(raw.get("triggers"), fail)
    cancel = raw.get("cancel")
    if cancel is not None:
        if not isinstance(cancel, list):
            raise fail("'cancel' must be a list of {\"event\", \"if\"?, \"timeout\"?}")
        config["cancel_on"] = [_cancel(item, fail) for item in cancel]
    if raw.get("idempotency") is not None:
        config["idempotency"] = raw["idempotency"]
    timeouts = raw.get("timeouts")
    if timeouts is not None:
        if not isinstance(timeouts, dict):
            raise fail("'timeouts' must be {\"start\"?, \"finish\"?}")
        config["timeouts"] = {key: value for key, value in timeouts.items() if value is not None}
    for inngest_name, name in _FLOW_FIELDS.items():
        if inngest_name in present:
            config[name] = _flow_option(inngest_name, raw[inngest_name])
    return config


def _flow_option(name: str, value: Any) -> Any:
    """An Inngest flow-control option in stepflow's spelling; its values are checked by the loader."""
    def plain(item: Any) -> Any:  # the SDKs send unset fields as null
        return {k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item

    if name == "concurrency":
        items = value if isinstance(value, list) else [value]
        out = []
        for item in map(plain, items):
            if isinstance(item, dict) and "scope" in item:
                item = {**item, "scope": _SCOPES.get(item["scope"], item["scope"])}
            out.append(item)
        return out
    value = plain(value)
    if name == "batchEvents" and isinstance(value, dict) and "maxSize" in value:
        value = {("max_size" if k == "maxSize" else k): v for k, v in value.items()}
    return value


def _triggers(raw: Any, fail: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise fail("'triggers' must be a list")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise fail(f"trigger #{i + 1} must be an object")
        item = {key: value for key, value in item.items() if value is not None}
        if "cron" in item:
            out.append({"cron": item["cron"]})
        elif "event" in item:
            trigger = {"event": item["event"]}
            if item.get("expression"):
                trigger["if"] = item["expression"]
            out.append(trigger)
        else:
            raise fail(f"trigger #{i + 1} needs 'event' or 'cron'")
    return out


def _cancel(item: Any, fail: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("event"), str):
        raise fail("each 'cancel' entry needs 'event'")
    out: dict[str, Any] = {"event": item["event"]}
    if item.get("if"):
        out["if"] = item["if"]
    if item.get("timeout"):
        out["timeout"] = item["timeout"]
    return out


@dataclass(frozen=True, slots=True)
class SyncRecord:
    at: float
    app_id: str
    url: str | None
    function_ids: tuple[str, ...]


class SyncLog:
    """The syncs this server received lately, so `stepflow dev -u` can tell what a PUT to an app achieved:
    an app answers its PUT with 200 even when it registered with some other server."""

    def __init__(self, size: int = 256) -> None:
        self._records: deque[SyncRecord] = deque(maxlen=size)

    def add(self, sync: SyncRequest) -> None:
        self._records.append(SyncRecord(time.time(), sync.app_id, sync.url, tuple(f.id for f in sync.functions)))

    def since(self, at: float) -> list[SyncRecord]:
        return [r for r in self._records if r.at >= at]
