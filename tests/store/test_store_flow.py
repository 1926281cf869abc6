"""Store contract: flow control counted in the store — concurrency slots (parked waiters, woken as slots free up,
a crashed worker's slot coming back through its lease), throttle reservations, rate-limit skips, singleton."""

from __future__ import annotations

from typing import Any

import pytest
from store_support import event, run_id

from stepflow.ids import now_ms
from stepflow.store.base import Store
from stepflow.store.records import EventRecord, Job, NewJob, NewRun, RunFlow, RunStatus, StepStatus, StepUpdate

pytestmark = pytest.mark.runs_once  # parametrized over both stores

DONE = StepUpdate(status=StepStatus.COMPLETED, ended_at=0, output={"status": 200, "body": None})


def limited(flow: RunFlow) -> object:
    def plan(ev: EventRecord) -> list[NewRun]:
        return [NewRun(run_id=run_id(int(ev.data["n"])), function_id="f", function_version=1, app_id="a",
                       jobs=[NewJob("s", ev.received_at)], flow=flow)]
    return plan


async def test_a_full_slot_parks_its_waiters_and_a_settled_job_wakes_the_next(store: Store) -> None:
    now = now_ms()
    plan = limited(RunFlow(slots=[("f:f:acme", 1)]))
    await store.ingest_events([event(f"e{n}", n, at=now) for n in range(3)], plan)  # type: ignore[arg-type]
    [first] = await store.claim_jobs("w", 10, 30_000, now)
    assert first.run_id == run_id(0) and first.slots == (("f:f:acme", 1),)
    assert await store.claim_jobs("w", 10, 30_000, now + 1) == []  # the others wait for the slot
    waiting = await store.run_waiting(run_id(1), now + 1)
    assert waiting == {"s": {"reason": "concurrency", "key": "acme", "executing": 1, "limit": 1}}
    await store.settle_job(first, DONE, None, now + 2)
    [second] = await store.claim_jobs("w", 10, 30_000, now + 3)
    assert second.run_id == run_id(1)  # oldest first
    assert await store.claim_jobs("w", 10, 30_000, now + 4) == []


async def test_a_crashed_workers_slot_comes_back_with_its_lease(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event(f"e{n}", n, at=now) for n in range(2)],
                              limited(RunFlow(slots=[("f:f:", 1)])))  # type: ignore[arg-type]
    [lost] = await store.claim_jobs("dead", 10, 1000, now)
    assert await store.claim_jobs("w", 10, 1000, now + 999) == []
    # the lease lapsed: the lost attempt is tried again (it holds the slot), and the waiter's turn comes after it
    [again] = await store.claim_jobs("w", 10, 1000, now + 1001)
    assert (again.id, again.attempt) == (lost.id, 1)
    await store.settle_job(again, DONE, None, now + 1002)
    [waiter] = await store.claim_jobs("w", 10, 1000, now + 1003)
    assert waiter.run_id == run_id(1)


async def test_the_sweep_wakes_waiters_whose_slot_freed_silently(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event(f"e{n}", n, at=now) for n in range(2)],
                              limited(RunFlow(slots=[("*:db", 1)])))  # type: ignore[arg-type]
    [first] = await store.claim_jobs("w", 10, 30_000, now)
    await store.cancel_run(first.run_id, now + 1)  # its run ended: the slot is free
    assert await store.wake_waiting(now + 2) == 0  # the cancel already woke the waiter
    [second] = await store.claim_jobs("w", 10, 30_000, now + 3)
    assert second.run_id == run_id(1)
    assert await store.wake_waiting(now + 4) == 0


async def test_throttle_reserves_start_times_in_order(store: Store) -> None:
    now = now_ms()
    # one start a second, two at once
    await store.ingest_events([event(f"e{n}", n, at=now) for n in range(4)],
                              limited(RunFlow(throttle=("t:f:", 1000, 1000))))  # type: ignore[arg-type]
    due = sorted([(await store.run_waiting(run_id(n), now)).get("s", {}).get("until", now) for n in range(4)])
    assert due == [now, now, now + 1000, now + 2000]
    assert len(await store.claim_jobs("w", 10, 30_000, now)) == 2
    [third] = await store.claim_jobs("w", 10, 30_000, now + 1000)
    assert third.run_id == run_id(2)


async def test_rate_limit_and_singleton_skips_are_recorded(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event(f"r{n}", n, at=now) for n in range(3)],
                              limited(RunFlow(rate_limit=("r:f:", 3_600_000, 0))))  # type: ignore[arg-type]
    assert [len(await store.get_event_runs(f"r{n}")) for n in range(3)] == [1, 0, 0]
    [skip] = await store.get_event_skips("r1")
    assert (skip["function_id"], skip["reason"]) == ("f", "rate_limit")
    await store.ingest_events([event(f"s{n}", n + 10, at=now) for n in range(2)],
                              limited(RunFlow(singleton=("k", "skip"))))  # type: ignore[arg-type]
    assert [len(await store.get_event_runs(f"s{n}")) for n in range(2)] == [1, 0]
    assert [s["reason"] for s in await store.get_event_skips("s1")] == ["singleton"]
    run = await store.get_run(run_id(10))
    assert run is not None and run.status is RunStatus.QUEUED


async def test_spans_are_kept_with_their_run_and_read_back_in_batches(store: Store) -> None:
    from stepflow.store.records import SpanRecord

    now = now_ms()
    plan: Any = limited(RunFlow())
    await store.ingest_events([event(f"t{n}", n, at=now) for n in range(2)], plan)
    [first, second] = await store.claim_jobs("w", 10, 30_000, now)

    def span(job: Job, span_id: str, status: str) -> SpanRecord:
        return SpanRecord(run_id=job.run_id, span_id=span_id, parent_id=None, name="step s", start=now,
                          end=now + 5, status=status, attributes={"attempt": 1})

    failed = StepUpdate(status=StepStatus.SCHEDULED, ended_at=now + 5, error={"code": "x"},
                        span=span(first, "a" * 16, "error"))
    assert await store.retry_job(first, failed, now + 10)          # a retried attempt: a row in spans
    done = StepUpdate(status=StepStatus.COMPLETED, ended_at=now + 5, output={"status": 200, "body": None},
                      span=span(second, "b" * 16, "ok"))
    await store.settle_job(second, done, None, now + 6)             # the final one: kept in its step row
    traces = {run.id: spans for run, spans in await store.get_traces([first.run_id, second.run_id, "nope"])}
    assert [(s.span_id, s.status) for s in traces[first.run_id]] == [("a" * 16, "error")]
    assert [(s.span_id, s.attributes) for s in traces[second.run_id]] == [("b" * 16, {"attempt": 1})]
    assert [s.span_id for s in await store.get_run_spans(second.run_id)] == ["b" * 16]
    run = await store.get_run(first.run_id)
    assert run is not None and run.trace_id is not None and len(run.trace_id) == 32
