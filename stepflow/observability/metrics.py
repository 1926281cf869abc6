"""Prometheus metrics (prometheus-client): what an engine process did, and the state of the queue it shares.

One `Metrics` per engine, each with a registry of its own (two engines in one process — tests, an embedded engine
beside a server — never mix their counts). Counters and histograms are updated where things happen: events when
ingested, runs when a claim starts them and when they end (`StoreHooks.run_finished`), step attempts and their
duration around every runtime invocation, retries, leases found expired by a claim, durable-endpoint requests
when their response is checkpointed, store transactions as they commit. The queue's state (depth, the age of the
oldest due job, the work flow control holds) is read from the store when scraped: it is shared by every process,
so each one reports the same figures.

Names follow Prometheus conventions (`stepflow_…_total`, `…_seconds`); docs/observability.md lists them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# step and run durations: 5 ms … 1 h (a step is usually fast; a run may sleep for hours, then +Inf)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Counter("stepflow_events_received", "Events stored (duplicates excluded)",
                                       registry=r)
        self.runs_started = Counter("stepflow_runs_started", "Runs whose first step started", ["function"],
                                    registry=r)
        self.runs_ended = Counter("stepflow_runs_ended", "Runs that ended, by how", ["function", "status"],
                                  registry=r)
        self.run_duration = Histogram("stepflow_run_duration_seconds", "From a run's creation to its end",
                                      ["function", "status"], buckets=RUN_BUCKETS, registry=r)
        self.step_attempts = Counter("stepflow_step_attempts", "Step attempts (and code-function calls), by the "
                                     "runtime that ran them and what came back", ["runtime", "outcome"], registry=r)
        self.step_duration = Histogram("stepflow_step_duration_seconds", "One attempt, from the invocation to its "
                                       "answer", ["runtime"], buckets=STEP_BUCKETS, registry=r)
        self.retries = Counter("stepflow_step_retries", "Attempts put back for another try", ["function"],
                               registry=r)
        self.leases_expired = Counter("stepflow_leases_expired", "Jobs claimed again after their worker's lease "
                                      "lapsed (a worker died or stalled mid-attempt)", registry=r)
        self.endpoint_requests = Counter("stepflow_durable_endpoint_requests", "Durable-endpoint requests "
                                         "answered, by endpoint and HTTP status", ["endpoint", "status"],
                                         registry=r)
        self.store_transactions = Histogram("stepflow_store_transaction_seconds", "A store transaction, from its "
                                            "start to its commit", buckets=STORE_BUCKETS, registry=r)
        self.queue_due = Gauge("stepflow_queue_due_jobs", "Jobs due and not yet claimed", registry=r)
        self.queue_leased = Gauge("stepflow_queue_executing_jobs", "Jobs claimed and executing", registry=r)
        self.queue_oldest_due = Gauge("stepflow_queue_oldest_due_age_seconds", "How long the oldest due job has "
                                      "been waiting to be claimed (0 when none)", registry=r)
        self.flow_waiting = Gauge("stepflow_flow_control_waiting_jobs", "Jobs flow control holds back, by control "
                                  "(concurrency, throttle, debounce, batch)", ["control"], registry=r)

        # labelled children, looked up once: `labels()` takes a lock and builds a key on every call, and these two
        # are called for every step attempt and every run
        self._attempt_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._run_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def attempt(self, runtime: str, outcome: str, seconds: float) -> None:
        children = self._attempt_children.get((runtime, outcome))
        if children is None:
            children = (self.step_attempts.labels(runtime, outcome), self.step_duration.labels(runtime))
            self._attempt_children[(runtime, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)

    def run_ended(self, function_id: str, status: str, seconds: float | None) -> None:
        children = self._run_children.get((function_id, status))
        if children is None:
            children = (self.runs_ended.labels(function_id, status), self.run_duration.labels(function_id, status))
            self._run_children[(function_id, status)] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def set_queue(self, stats: dict[str, Any]) -> None:
        self.queue_due.set(stats["due"])
        self.queue_leased.set(stats["executing"])
        self.queue_oldest_due.set(stats["oldest_due_age_ms"] / 1000)
        for control in ("concurrency", "throttle", "debounce", "batch"):
            self.flow_waiting.labels(control).set(stats["waiting"].get(control, 0))

    def exposition(self) -> bytes:
        """The text format, for `GET /metrics`."""
        return generate_latest(self.registry)


class _Off:
    """A metric that records nothing (labels() returns itself)."""

    def labels(self, *_: Any) -> _Off:
        return self

    def inc(self, *_: Any) -> None:
        return None

    def observe(self, *_: Any) -> None:
        return None


class MetricsOff(Metrics):
    """STEPFLOW_METRICS=off: every metric records nothing, and `GET /metrics` answers an empty page."""

    def __init__(self) -> None:  # noqa: D107 - no registry, no metric objects: nothing is counted
        off: Any = _Off()
        self.registry = CollectorRegistry()
        for name in ("events_received", "runs_started", "runs_ended", "run_duration", "step_attempts",
                     "step_duration", "retries", "leases_expired", "endpoint_requests", "store_transactions"):
            setattr(self, name, off)

    def attempt(self, runtime: str, outcome: str, seconds: float) -> None:
        return None

    def run_ended(self, function_id: str, status: str, seconds: float | None) -> None:
        return None

    def set_queue(self, stats: dict[str, Any]) -> None:
        return None
