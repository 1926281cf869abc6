"""How records look on the wire. v1 keeps the field names of Inngest's REST API; v2 follows the InngestRun
JSON Schema exactly (no other fields)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from stepflow.store.records import EventRecord, RunRecord, StepRecord

MAX_TIMESTAMP_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the last instant ISO 8601 dates can write


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    # clamped: one out-of-range timestamp must not make a run, or a whole listing, unreadable
    ms = min(max(ms, 0), MAX_TIMESTAMP_MS)
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def describe_waiting(waiting: dict[str, Any]) -> str:
    """`concurrency key "tenant-7" (5/5)`, `throttled until 2026-…Z`, `debouncing until 2026-…Z`."""
    if waiting["reason"] == "concurrency":
        what = f'concurrency key "{waiting["key"]}"' if waiting["key"] is not None else "concurrency limit"
        return f"{what} ({waiting['executing']}/{waiting['limit']})"
    if waiting["reason"] == "batch":
        return f"batching {waiting['size']}/{waiting['max_size']} until {iso(waiting['until'])}"
    return f"{'throttled' if waiting['reason'] == 'throttle' else 'debouncing'} until {iso(waiting['until'])}"


def run_v1(run: RunRecord, environment_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run_id": run.id,
        "run_started_at": iso(run.started_at if run.started_at is not None else run.created_at),
        "function_id": run.function_id,
        "function_version": run.function_version,
        "environment_id": environment_id,
        "event_id": run.event_id,
        "status": run.status.v1_name,
        "ended_at": iso(run.ended_at),
        "output": run.output,
    }
    if run.error is not None:
        out["error"] = run.error
    if run.original_run_id is not None:
        out["original_run_id"] = run.original_run_id  # a rerun: the run it repeats
    return out


def v2_output(output: Any) -> dict[str, Any]:
    """The v2 schema requires `output` to be an object. Any other value is wrapped as `{"value": …}`, and so is an
    object whose only key is `value` — so the rule for a reader is exact: an output with exactly one key,
    `value`, is a wrapper; the function's output is what it holds."""
    if isinstance(output, dict) and set(output) != {"value"}:
        return output
    return {"value": output}


def run_v2(run: RunRecord, extended: bool = False) -> dict[str, Any]:
    """Valid against the InngestRun schema: `output` must be an object, timestamps strings; absent → omitted.
    The extended form (`?extended=true`) adds what that schema has no room for: the function version, when the
    run was created, its error and the run it reruns."""
    out: dict[str, Any] = {"run_id": run.id, "function_id": run.function_id, "app_id": run.app_id,
                           "status": run.status.value}
    if run.event_id is not None:
        out["event_id"] = run.event_id
    if run.output is not None:
        out["output"] = v2_output(run.output)
    if run.started_at is not None:
        out["started_at"] = iso(run.started_at)
    if run.ended_at is not None:
        out["ended_at"] = iso(run.ended_at)
    if extended:
        out["function_version"] = run.function_version
        out["created_at"] = iso(run.created_at)
        if run.error is not None:
            out["error"] = run.error
        if run.original_run_id is not None:
            out["original_run_id"] = run.original_run_id
    return out


def step_v1(step: StepRecord) -> dict[str, Any]:
    output = step.output
    if step.kind is not None and isinstance(output, dict) and "data" in output:
        output = output["data"]  # code function steps store {"data": value}; show the value
    out: dict[str, Any] = {
        "step_id": step.display_name,
        "status": step.status.value,
        "attempts": step.attempts,
        "scheduled_at": iso(step.scheduled_at),
        "started_at": iso(step.started_at),
        "ended_at": iso(step.ended_at),
        "output": output,
        "error": step.error,
    }
    if step.kind is not None:
        out["kind"] = step.kind
        out["hashed_id"] = step.step_id
    if step.logs:
        out["logs"] = step.logs
    return out


def event_v1(event: EventRecord) -> dict[str, Any]:
    out = event.to_dict()
    out["received_at"] = iso(event.received_at)
    return out
