"""OTLP export of runs' traces, with the OpenTelemetry SDK (`pip install 'stepflow[otel]'`).

On when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (the standard variables; the
exporter reads the others itself: headers, timeout, …). When a run ends, the process that ended it exports its
trace as kept in the store — the run's root span and its stored spans — in a background task, a few runs at a
time; the export's HTTP call runs in a thread, never on the event loop. A run's spans are exported once, when it
ends (a run sleeping for a week shows up then). An export that fails is logged and dropped: traces are
diagnostics, and the store keeps them for `GET /v2/runs/{id}/trace` whatever happens to the export.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from stepflow.errors import StepflowError
from stepflow.observability.tracing import root_span_id
from stepflow.store.base import Store
from stepflow.store.records import RunRecord, SpanRecord

log = logging.getLogger("stepflow.otlp")
BATCH = 512         # runs exported per request, at most
LINGER = 0.25       # seconds to wait for more ended runs before an export: fewer, larger requests
READ_RETRIES = 5    # a run read before the transaction that ended it committed is read again (10 ms apart)


def configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class OtlpExporter:
    def __init__(self, store: Store) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource

        self._store = store
        self._exporter = OTLPSpanExporter()
        self._resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "stepflow")})
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, store: Store) -> OtlpExporter | None:
        if not configured():
            return None
        try:
            return cls(store)
        except ImportError:
            log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set, but the OpenTelemetry SDK is not installed: "
                        "pip install 'stepflow[otel]' to export traces (they are kept with each run all the same)")
            return None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="stepflow-otlp")

    async def stop(self, grace: float = 5.0) -> None:
        """Export what is queued (for at most `grace` seconds: an unreachable collector must not hold the
        shutdown), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), grace)
        except TimeoutError:
            log.warning("OTLP export: %d run(s) not exported at shutdown", self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.to_thread(self._exporter.shutdown)

    def run_ended(self, run_id: str) -> None:
        self._queue.put_nowait(run_id)

    async def _loop(self) -> None:
        while True:
            run_ids = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + LINGER
            while len(run_ids) < BATCH:
                try:
                    run_ids.append(await asyncio.wait_for(self._queue.get(),
                                                          deadline - asyncio.get_running_loop().time()))
                except TimeoutError:
                    break
            try:
                spans = await self._spans_of(run_ids)
                if spans:
                    result = await asyncio.to_thread(self._exporter.export, spans)
                    if result.name != "SUCCESS":
                        log.warning("OTLP export of %d span(s) failed (%s)", len(spans), result.name)
            except (StepflowError, OSError) as exc:
                log.warning("OTLP export failed: %s", exc)
            finally:
                for _ in run_ids:
                    self._queue.task_done()

    async def _spans_of(self, run_ids: list[str]) -> list[Any]:
        """The batch's ended runs and their spans, read together; a run read before the transaction that ended
        it committed is read again, a few times, then left out."""
        spans: list[Any] = []
        pending = run_ids
        for _ in range(READ_RETRIES):
            later: list[str] = []
            for run, run_spans in await self._store.get_traces(pending):
                if not run.status.is_terminal:
                    later.append(run.id)
                elif run.trace_id:
                    spans += self._convert(run, run_spans)
            if not later:
                break
            pending = later
            await asyncio.sleep(0.01)
        return spans

    def _convert(self, run: RunRecord, spans: list[SpanRecord]) -> list[Any]:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        assert run.trace_id is not None
        trace_id = int(run.trace_id, 16)

        def context(span_id: str, remote: bool = False) -> SpanContext:
            return SpanContext(trace_id, int(span_id, 16), is_remote=remote, trace_flags=TraceFlags(1))

        root = root_span_id(run.id)
        ended = (run.ended_at or run.created_at) * 1_000_000
        out = [ReadableSpan(
            name=f"run {run.function_id}", context=context(root), resource=self._resource, kind=SpanKind.INTERNAL,
            parent=context(run.parent_span_id, remote=True) if run.parent_span_id else None,
            attributes={"stepflow.function.id": run.function_id, "stepflow.run.id": run.id,
                        "stepflow.run.status": run.status.v1_name, "stepflow.event.id": run.event_id or ""},
            status=Status(StatusCode.ERROR if run.status.value == "FAILED" else StatusCode.OK),
            start_time=run.created_at * 1_000_000, end_time=ended)]
        for span in spans:
            attributes = {f"stepflow.{k}": v for k, v in span.attributes.items()
                          if isinstance(v, (str, int, float, bool))}
            out.append(ReadableSpan(
                name=span.name, context=context(span.span_id), parent=context(span.parent_id or root),
                resource=self._resource, kind=SpanKind.INTERNAL, attributes=attributes,
                status=Status(StatusCode.ERROR if span.status == "error" else StatusCode.OK),
                start_time=span.start * 1_000_000,
                end_time=(span.end * 1_000_000) if span.end is not None else ended))
        return out
