"""Store contract: the work queue — due jobs, leases, expiry, renewal, release, retries, concurrent claimers."""

from __future__ import annotations

import asyncio

import pytest
from store_support import event, one_step_run

from stepflow.ids import now_ms
from stepflow.store.base import Store
from stepflow.store.records import RunStatus, StepStatus, StepUpdate

pytestmark = pytest.mark.runs_once  # parametrized over both stores


async def test_only_due_jobs_are_claimed_and_next_due_at_says_when(store: Store) -> None:
    now = now_ms()
    assert await store.next_due_at() is None  # no work at all
    await store.ingest_events([event("e1", 1)], lambda ev: one_step_run(ev, at=now + 60_000))
    assert await store.claim_jobs("w", 10, 1000, now) == []
    assert await store.next_due_at() == now + 60_000
    [job] = await store.claim_jobs("w", 10, 1000, now + 60_000)
    assert (job.step_id, job.attempt, job.function_id) == ("s", 0, "f")
    run = await store.get_run(job.run_id)
    assert run is not None and run.status is RunStatus.RUNNING and run.started_at == now + 60_000
    [step] = await store.get_run_steps(job.run_id)
    assert (step.status, step.attempts) == (StepStatus.RUNNING, 1)


async def test_a_lease_holds_until_it_expires_and_an_expired_one_costs_an_attempt(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("e1", 1, at=now)], one_step_run)
    [first] = await store.claim_jobs("w1", 10, 1000, now)
    assert await store.claim_jobs("w2", 10, 1000, now + 999) == []
    [again] = await store.claim_jobs("w2", 10, 1000, now + 1001)  # w1 died mid-attempt
    assert (again.id, again.attempt) == (first.id, 1) and again.token != first.token


async def test_renewal_extends_only_the_jobs_named_and_release_frees_them(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("e1", 1, at=now), event("e2", 2, at=now)], one_step_run)
    a, b = await store.claim_jobs("w1", 10, 1000, now)
    assert await store.renew_leases("w1", now + 10_000, [a.id]) == 1
    [taken] = await store.claim_jobs("w2", 10, 1000, now + 2000)  # only b's lease ran out
    assert taken.id == b.id
    assert await store.release_leases("w1", now + 2000) == 1
    [freed] = await store.claim_jobs("w3", 10, 1000, now + 2000)
    assert freed.id == a.id and freed.attempt == 0  # released, not expired: no attempt spent


async def test_a_retried_job_comes_back_when_due_with_the_next_attempt(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event("e1", 1, at=now)], one_step_run)
    [job] = await store.claim_jobs("w", 10, 1000, now)
    error = {"code": "step_error", "message": "503"}
    update = StepUpdate(status=StepStatus.SCHEDULED, ended_at=now + 5, error=error)
    assert await store.retry_job(job, update, now + 500)
    [step] = await store.get_run_steps(job.run_id)
    assert (step.status, step.error) == (StepStatus.SCHEDULED, error)
    assert await store.claim_jobs("w", 10, 1000, now + 499) == []
    [retry] = await store.claim_jobs("w", 10, 1000, now + 500)
    assert (retry.id, retry.attempt) == (job.id, 1)
    assert not await store.retry_job(job, update, now + 900)  # the old claim's token is stale


async def test_two_claimers_at_once_never_share_a_job(store: Store) -> None:
    now = now_ms()
    await store.ingest_events([event(f"e{i}", i, at=now) for i in range(60)], one_step_run)
    batches = await asyncio.gather(*(store.claim_jobs(f"w{i}", 7, 60_000, now) for i in range(12)))
    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == 60 and len(set(claimed)) == 60


async def test_driver_errors_do_not_cross_the_boundary(store: Store) -> None:
    """A constraint the database enforces is a StoreConflictError (409); any other driver error a StoreError —
    never an sqlite3 or asyncpg exception (the API would answer those 500 with a driver traceback)."""
    from stepflow.errors import StoreConflictError, StoreError
    from stepflow.store.sql_base import Conn, SqlBase

    assert isinstance(store, SqlBase)
    await store.ingest_events([event("e1", 1)], one_step_run)

    async def duplicate(c: Conn) -> None:
        await c.execute("INSERT INTO events (id, name, payload, ts, received_at) SELECT id, name, payload, ts, "
                        "received_at FROM events WHERE id=?", "e1")

    async def nonsense(c: Conn) -> None:
        await c.execute("SELECT no_such_column FROM runs")

    try:
        await store._transaction(duplicate)
    except StoreConflictError as exc:
        assert exc.status == 409 and "conflicts with what is stored" in exc.message
    else:
        raise AssertionError("a duplicate primary key was accepted")
    for operation in (store._transaction, store._read):
        try:
            await operation(nonsense)
        except StoreConflictError:
            raise AssertionError("not a conflict") from None
        except StoreError as exc:
            assert "no_such_column" in exc.message
        else:
            raise AssertionError("a bad query succeeded")
    assert [e.id for e in [await store.get_event("e1")] if e] == ["e1"]  # the failed writes left nothing
