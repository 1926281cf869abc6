"""Listing runs: the indexed filters, and a CEL `query` over each run, its event and its output.

The indexed filters (status, function, event name, time range, original run) go to the store as SQL. A CEL
query cannot: it is evaluated here, on the runs the SQL filters leave, newest first, a batch at a time. So that
one request stays bounded whatever the query (one that matches nothing would otherwise read all 1,000,000 runs),
a page reads at most `SCAN_BUDGET` runs; when it stops on the budget it returns what it found and a cursor to go
on from — the way Inngest's and cloud-streams' searches page through what they scanned.

The query sees (Inngest's run search names `event` and `output`; `run` is stepflow's):
    event   {id, name, data, ts, v?, user?}      the triggering event (`null` for runs without one)
    output  the run's output; for a failed run, its error ({code, message, ...}), as Inngest's does
    run     {id, status ("Failed", …), function_id, app_id, created_at, started_at, ended_at, error,
             original_run_id}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from stepflow.errors import ExpressionError
from stepflow.expressions import Expression
from stepflow.store.base import Store
from stepflow.store.records import EventRecord, RunRecord, RunStatus

SCAN_BUDGET = 10_000   # runs one page of a query search may read; ~0.2 s of CEL and decoding on this machine
_BATCH = 500           # runs read from the store at a time while searching


@dataclass(frozen=True)
class RunFilter:
    """Every filter given must hold. Times are epoch milliseconds of the run's creation, `until` exclusive."""

    status: RunStatus | None = None
    function_id: str | None = None
    event_name: str | None = None
    original_run_id: str | None = None
    created_from: int | None = None
    created_until: int | None = None
    query: str | None = None


@dataclass
class RunPage:
    """One page, newest first. `cursor` (a run id) continues after it; None when nothing is left."""

    runs: list[RunRecord]
    cursor: str | None
    scanned: int = 0                     # runs the query was evaluated on (0 without a query)
    query_errors: int = 0                # runs on which the query could not be evaluated (counted as no match)
    first_query_error: str | None = None
    events: dict[str, EventRecord] = field(default_factory=dict)


def compile_query(source: str) -> Expression:
    """The query compiled, or ExpressionError naming what is wrong with it (a 400 over REST)."""
    try:
        return Expression(source)
    except ExpressionError as exc:
        raise ExpressionError(f"'query': {exc.message}") from None


async def list_runs(store: Store, where: RunFilter, *, cursor: str | None = None, limit: int = 50) -> RunPage:
    """A page of runs matching `where`, after `cursor` (exclusive)."""
    async def fetch(after: str | None, count: int) -> list[RunRecord]:
        return await store.list_runs(status=where.status, function_id=where.function_id,
                                     event_name=where.event_name, original_run_id=where.original_run_id,
                                     created_from=where.created_from, created_until=where.created_until,
                                     cursor=after, limit=count)

    if where.query is None:
        runs = await fetch(cursor, limit + 1)
        return RunPage(runs[:limit], runs[limit - 1].id if len(runs) > limit else None)
    query = compile_query(where.query)
    # cel converts every variable it is given on each evaluation, used or not: give it only those the query names
    # (a third of the time for `event.data.x == 1`)
    names = frozenset(name for name in ("event", "output", "run") if re.search(rf"\b{name}\b", where.query))
    page = RunPage([], None)
    while page.scanned < SCAN_BUDGET:
        want = min(_BATCH, SCAN_BUDGET - page.scanned)
        batch = await fetch(cursor, want)
        if not batch:
            return page
        page.events.update(await store.get_events([r.event_id for r in batch if r.event_id]))
        for run in batch:
            page.scanned += 1
            cursor = run.id
            if _matches(query, names, run, page):
                page.runs.append(run)
                if len(page.runs) == limit:
                    # a full page: there may be more after it (one more read would tell, but could cost a budget)
                    page.cursor = run.id
                    return page
        if len(batch) < want:
            return page   # the store had no more
    page.cursor = cursor  # budget spent: go on from the last run read
    return page


def _matches(query: Expression, names: frozenset[str], run: RunRecord, page: RunPage) -> bool:
    activation: dict[str, Any] = {}
    if "event" in names:
        event = page.events.get(run.event_id) if run.event_id else None
        activation["event"] = event.to_dict() if event else None
    if "output" in names:
        activation["output"] = run.error if run.status is RunStatus.FAILED else run.output
    if "run" in names:
        activation["run"] = {
            "id": run.id, "status": run.status.v1_name, "function_id": run.function_id, "app_id": run.app_id,
            "created_at": run.created_at, "started_at": run.started_at, "ended_at": run.ended_at,
            "error": run.error, "original_run_id": run.original_run_id}
    try:
        value: Any = query.evaluate(activation)
    except ExpressionError as exc:
        # A field one run lacks (event.data.tenant on an event without it) means "not this run", as in
        # Inngest's search; the count and first message come back with the page so a wrong query is visible.
        page.query_errors += 1
        if page.first_query_error is None:
            page.first_query_error = str(exc)
        return False
    if not isinstance(value, bool):
        raise ExpressionError(f"'query' must be a condition (true or false), but {query.source!r} gave "
                                   f"{value!r} for run {run.id}")
    return value
