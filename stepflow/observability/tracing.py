"""Traces: W3C trace context for runs and their steps, and the span tree kept with each run.

Every run has a trace id (its own, or the sender's when the event came with a `traceparent`). Its root span is
the run itself (made from the run's record when read, never written); each step attempt and code-function call
is a child span, written in the transaction that records the attempt; sleeps and waits are spans too. Each
attempt's `traceparent` (`00-<trace id>-<attempt span id>-01`) reaches the step — an HTTP header, an environment
variable in a container, the Input's `ctx` everywhere — so the user's own instrumented code joins the trace.
`GET /v2/runs/{run_id}/trace` returns the tree from stepflow's store: no collector needed.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from stepflow.store.records import RunRecord, SpanRecord, StepRecord

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def new_span_id() -> str:
    return os.urandom(8).hex()


def root_span_id(run_id: str) -> str:
    """The run's own span: derived from its id, so it needs no storage and every process agrees on it."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:16]


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def parse_traceparent(header: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C `traceparent`, else None (an invalid one is ignored, as the
    spec says: the run starts a trace of its own)."""
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip().lower())
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(1), match.group(2)


def span_tree(run: RunRecord, spans: list[SpanRecord], steps: list[StepRecord]) -> dict[str, Any]:
    """The run's trace as a tree: the run's root span, its stored spans as children (by parent), by start."""
    del steps  # the stored spans already cover step attempts, sleeps and waits
    root: dict[str, Any] = {
        "span_id": root_span_id(run.id), "parent_id": run.parent_span_id, "name": f"run {run.function_id}",
        "start": run.created_at, "end": run.ended_at,
        "status": "error" if run.status.value in ("FAILED", "CANCELLED") else "ok",
        "attributes": {"function.id": run.function_id, "function.version": run.function_version, "run.id": run.id,
                       "event.id": run.event_id, "run.status": run.status.v1_name},
        "children": []}
    nodes: dict[str, dict[str, Any]] = {root["span_id"]: root}
    for span in spans:
        nodes[span.span_id] = {"span_id": span.span_id, "parent_id": span.parent_id or root["span_id"],
                               "name": span.name, "start": span.start, "end": span.end, "status": span.status,
                               "attributes": span.attributes, "children": []}
    for span in spans:
        node = nodes[span.span_id]
        nodes.get(node["parent_id"], root)["children"].append(node)
    return {"trace_id": run.trace_id, "root": root, "span_count": len(spans) + 1}
