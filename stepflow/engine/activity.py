"""What the engine is doing, one line per thing a person watching `stepflow dev` wants to see: an event received
(and the runs it started), a run started, a step completed, failed or retried, a run ended (function, status,
duration). Each line carries its fields (run_id, function_id, step, attempt, …) for `--log-format json`.

Logged at INFO on the `stepflow.activity` logger, so any logging setup can show, silence or ship it;
`stepflow dev` shows it unless `--quiet`, as text or as JSON lines (`--log-format json`). Nothing is computed for
it when the logger is off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from stepflow import codec
from stepflow.store.records import EventRecord, RunRecord

log = logging.getLogger("stepflow.activity")


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO)


def event_received(event: EventRecord, function_ids: Sequence[str]) -> None:
    started = f"started {len(function_ids)} run(s): {', '.join(function_ids)}" if function_ids else "started no run"
    log.info("event %s (%s) received; %s", event.name, event.id, started,
             extra={"activity": {"kind": "event", "event_id": event.id, "name": event.name,
                                 "functions": list(function_ids)}})


def run_started(run_id: str, function_id: str) -> None:
    log.info("run %s (%s) started", run_id, function_id,
             extra={"activity": {"kind": "run_started", "run_id": run_id, "function_id": function_id}})


def step_ended(run_id: str, function_id: str, step: str, attempt: int, status: str, duration_ms: int | None,
               error: dict[str, Any] | None = None, trace_id: str | None = None) -> None:
    timing = f" in {duration_ms} ms" if duration_ms is not None else ""
    detail = f": {str(error.get('message') or error.get('code') or '')[:300]}" if error else ""
    log.log(logging.INFO if status == "completed" else logging.WARNING, "run %s (%s): step %s %s%s (attempt %d)%s",
            run_id, function_id, step, status, timing, attempt + 1, detail,
            extra={"activity": {"kind": "step", "run_id": run_id, "function_id": function_id, "step": step,
                                "attempt": attempt + 1, "status": status, "duration_ms": duration_ms,
                                **({"trace_id": trace_id} if trace_id else {})}})


def step_retried(run_id: str, function_id: str, step: str, attempt: int, delay: float, error: dict[str, Any]) -> None:
    message = str(error.get("message") or error.get("code") or "")[:300]
    log.info("run %s (%s): step %s failed attempt %d (%s); retrying in %.3gs", run_id, function_id, step,
             attempt + 1, message, delay,
             extra={"activity": {"kind": "retry", "run_id": run_id, "function_id": function_id, "step": step,
                                 "attempt": attempt + 1, "delay_s": delay, "error": message}})


def run_ended(run: RunRecord) -> None:
    began = run.started_at or run.created_at
    duration = max(0, (run.ended_at or began) - began) / 1000
    level = logging.INFO if run.status.value == "COMPLETED" else logging.WARNING
    detail = ""
    if run.error and run.status.value != "COMPLETED":
        detail = f": {str(run.error.get('message') or run.error.get('code') or '')[:300]}"
    log.log(level, "run %s (%s) %s in %.3fs%s", run.id, run.function_id, run.status.v1_name, duration, detail,
            extra={"activity": {"kind": "run", "run_id": run.id, "function_id": run.function_id,
                                "status": run.status.v1_name, "duration_s": duration,
                                **({"trace_id": run.trace_id} if run.trace_id else {})}})


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the activity's fields when it has them."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                                "level": record.levelname.lower(), "logger": record.name,
                                "message": record.getMessage()}
        line.update(getattr(record, "activity", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return codec.dumps(line).decode()
