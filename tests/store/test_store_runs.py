"""Store contract: settling jobs, ending runs, cancelling, pausing on events, listing runs page by page."""

from __future__ import annotations

import pytest
from store_support import code_run, event, one_step_run, run_id

from stepflow.ids import now_ms
from stepflow.store.base import Store
from stepflow.store.records import Advance, JobKind, NewJob, NewPause, NewRun, RunStatus, StepStatus, StepUpdate

pytestmark = pytest.mark.runs_once  # parametrized over both stores


async def test_settling_records_the_result_and_applies_the_decision_in_one_go(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("e1", 1, at=now)], lambda ev: one_step_run(ev, steps=("a",)))
    [job] = await store.claim_jobs("w", 10, 1000, now)
    seen: list[int] = []

    def decide(state: object) -> Advance:
        seen.append(state.pending_jobs)  # type: ignore[attr-defined]
        return Advance(jobs=[NewJob("b", now + 10)])

    update = StepUpdate(status=StepStatus.COMPLETED, ended_at=now + 5, output={"status": 200, "body": 1})
    run = await store.settle_job(job, update, decide, now + 5)
    assert run is not None and run.status is RunStatus.RUNNING and seen == [0]
    steps = {s.step_id: s for s in await store.get_run_steps(job.run_id)}
    assert (steps["a"].status, steps["a"].output, steps["a"].seq) == (StepStatus.COMPLETED,
                                                                       {"status": 200, "body": 1}, 1)
    assert steps["b"].status is StepStatus.SCHEDULED
    [next_job] = await store.claim_jobs("w", 10, 1000, now + 10)
    ended = await store.settle_job(next_job, StepUpdate(status=StepStatus.COMPLETED, ended_at=now + 20),
                                   lambda state: Advance(finish=RunStatus.COMPLETED, output={"ok": True}), now + 20)
    assert ended is not None and (ended.status, ended.output, ended.ended_at) == (RunStatus.COMPLETED, {"ok": True},
                                                                               now + 20)


async def test_a_settle_by_a_worker_that_lost_its_lease_changes_nothing(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("e1", 1, at=now)], one_step_run)
    [stale] = await store.claim_jobs("w1", 10, 1000, now)
    [current] = await store.claim_jobs("w2", 10, 1000, now + 2000)
    late = StepUpdate(status=StepStatus.COMPLETED, ended_at=now + 2100, output={"status": 200, "body": "late"})
    assert await store.settle_job(stale, late, lambda s: Advance(finish=RunStatus.COMPLETED), now + 2100) is None
    [step] = await store.get_run_steps(current.run_id)
    assert step.status is StepStatus.RUNNING and step.output is None  # the step shows the live attempt only
    assert (await store.get_run(current.run_id)).status is RunStatus.RUNNING  # type: ignore[union-attr]


async def test_a_run_left_with_nothing_pending_is_failed_saying_so(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("e1", 1, at=now)], one_step_run)
    [job] = await store.claim_jobs("w", 10, 10_000, now)
    run = await store.settle_job(job, None, lambda state: Advance(), now + 1)
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error is not None and run.error["code"] == "no_progress"


async def test_cancelling_ends_the_run_and_drops_its_work(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("e1", 1, at=now)], lambda ev: one_step_run(ev, steps=("a", "b")))
    cancelled = await store.cancel_run(run_id(1), now + 1)
    assert cancelled is not None and cancelled.status is RunStatus.CANCELLED
    assert await store.claim_jobs("w", 10, 1000, now + 2) == []
    assert {s.status for s in await store.get_run_steps(run_id(1))} == {StepStatus.CANCELLED}
    again = await store.cancel_run(run_id(1), now + 3)
    assert again is not None and again.status is RunStatus.CANCELLED and again.ended_at == now + 1
    assert await store.cancel_run("01RUN000000000000000000404", now) is None


async def test_an_event_resolves_a_wait_and_the_function_is_called_again(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("start", 1, at=now)], code_run)
    [call] = await store.claim_jobs("w", 10, 1000, now)
    assert call.kind is JobKind.CALL

    def wait(state: object) -> Advance:
        return Advance(pauses=[NewPause(run_id=run_id(1), step_id="w1", kind="event", event_name="order/approved",
                                        expires_at=now + 60_000)],
                       jobs=[NewJob("w1", now + 60_000, JobKind.TIMEOUT, {"wait": "event"}, step_row=False)])

    await store.settle_job(call, None, wait, now + 1)
    assert await store.claim_jobs("w", 10, 1000, now + 2) == []  # waiting
    await store.ingest_events([event("other", 2, at=now + 3, name="order/shipped"),
                               event("approval", 3, at=now + 4, name="order/approved")], lambda ev: [])
    [step] = await store.get_run_steps(run_id(1))
    assert step.step_id == "w1" and step.status is StepStatus.COMPLETED
    assert step.output is not None
    resolved = step.output["data"]
    assert (resolved["id"], resolved["name"], resolved["data"]) == ("approval", "order/approved", {"n": 3})
    [again] = await store.claim_jobs("w", 10, 1000, now + 5)
    assert (again.kind, again.payload) == (JobKind.CALL, None)  # the timeout job went with the wait


async def test_runs_list_newest_first_page_by_page_with_filters(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event(f"e{i}", i, at=now) for i in range(7)],
                              lambda ev: one_step_run(ev, function_id="odd" if ev.data["n"] % 2 else "even"))
    await store.cancel_run(run_id(3), now + 1)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_runs(limit=3, cursor=cursor)
        seen += [r.id for r in page]
        if len(page) < 3:
            break
        cursor = page[-1].id
    assert seen == [run_id(i) for i in reversed(range(7))]
    assert [r.id for r in await store.list_runs(function_id="odd")] == [run_id(5), run_id(3), run_id(1)]
    assert [r.id for r in await store.list_runs(status=RunStatus.CANCELLED)] == [run_id(3)]
    assert [r.id for r in await store.list_runs(status=RunStatus.QUEUED, function_id="odd")] == [run_id(5), run_id(1)]


async def test_the_start_timeout_cancels_a_run_still_queued_at_its_deadline(store: Store) -> None:
    now = now_ms()

    def with_deadline(ev: object) -> list[NewRun]:
        [run] = one_step_run(ev, at=now + 5_000)  # type: ignore[arg-type]
        run.start_timeout_ms = 1_000
        return [run]

    await store.ingest_events([event("late", 1, at=now)], with_deadline)  # its step is due only after 5 s
    assert await store.claim_jobs("w", 10, 60_000, now + 999) == []
    assert (await store.get_run(run_id(1))).status is RunStatus.QUEUED  # type: ignore[union-attr]
    assert await store.claim_jobs("w", 10, 60_000, now + 1_000) == []  # the start timer came due
    late = await store.get_run(run_id(1))
    assert late is not None and late.status is RunStatus.CANCELLED
    assert late.error is not None and late.error["code"] == "start_timeout" and "(1s)" in late.error["message"]
    assert await store.claim_jobs("w", 10, 60_000, now + 5_000) == []  # nothing of it ever runs


async def test_a_run_that_started_in_time_outlives_its_start_timer(store: Store) -> None:
    now = now_ms()

    def with_deadline(ev: object) -> list[NewRun]:
        [run] = one_step_run(ev)  # type: ignore[arg-type]
        run.start_timeout_ms = 1_000
        return [run]

    await store.ingest_events([event("prompt", 1, at=now)], with_deadline)
    [job] = await store.claim_jobs("w", 10, 60_000, now)
    assert job.step_id == "s"
    assert await store.claim_jobs("w", 10, 60_000, now + 1_000) == []  # the start timer: spent, harmless
    run = await store.get_run(run_id(1))
    assert run is not None and run.status is RunStatus.RUNNING
