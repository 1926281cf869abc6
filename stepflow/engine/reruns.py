"""Reruns: a new run of a function's current version for the same event, linked to the run it repeats.

From a step, the new run keeps the stored results of what came before that step and executes from there:
- a code function keeps the memo of every step recorded before it (its order of completion), so the function
  replays them and runs the chosen step anew;
- a workflow keeps the step's ancestors in the DAG; what runs first is decided by the planner's own rule,
  as if those steps had just completed (a root, or a step whose parents are kept and whose edge fires).

Pure decisions over a run's recorded state; the engine stores the new run in one transaction.
"""

from __future__ import annotations

from stepflow.definitions import FunctionDef
from stepflow.engine.planner import advance_workflow
from stepflow.engine.runs import new_run
from stepflow.errors import ConflictError, NotFoundError
from stepflow.ids import now_ms
from stepflow.store.records import (
    NewJob,
    NewRun,
    RunState,
    StepRecord,
    StepStatus,
    StepUpdate,
    StepWrite,
)


def plan_rerun(original: RunState, fn: FunctionDef, version: int, from_step: str | None) -> NewRun:
    """The new run; refuses (ConflictError / NotFoundError) what cannot be rerun, saying why."""
    run = original.run
    if not run.status.is_terminal:
        raise ConflictError(f"run {run.id} is {run.status.v1_name}: only a run that has ended can be rerun "
                            "(cancel it first)")
    now = now_ms()
    rerun = new_run(fn, version, original.event or {}, now)
    rerun.original_run_id = run.id
    rerun.idempotency_key = None  # an operator's explicit ask: idempotency dedups events, not reruns
    if from_step is None:
        return rerun
    if not fn.is_code and from_step in fn.steps and from_step not in original.steps:
        raise ConflictError(f"step {from_step!r} of run {run.id} never ran: rerun from a step that ran, or rerun "
                            "the whole run")
    step = _find_step(original, from_step)
    if step.status not in (StepStatus.COMPLETED, StepStatus.FAILED) or (fn.is_code and step.seq == 0):
        raise ConflictError(f"step {from_step!r} of run {run.id} never completed ({step.status.value}): rerun "
                            "from a step that ran, or rerun the whole run")
    if fn.is_code:
        kept = sorted((s for s in original.steps.values() if s.kind is not None and 0 < s.seq < step.seq),
                      key=lambda s: s.seq)
        rerun.steps = [_kept(s) for s in kept]
        return rerun
    if step.step_id not in fn.steps:
        raise ConflictError(f"step {from_step!r} is not in the current version of workflow {fn.id!r}: rerun the "
                            "whole run")
    ancestors = _ancestors(fn, step.step_id)
    kept = sorted((s for sid, s in original.steps.items() if sid in ancestors and s.status is StepStatus.COMPLETED),
                  key=lambda s: s.seq)
    rerun.steps = [_kept(s) for s in kept]
    rerun.jobs = _first_jobs(fn, original, {s.step_id: s for s in kept}, now)
    if not rerun.jobs:
        raise ConflictError(f"nothing would run from step {from_step!r}: with the kept results, the conditions of "
                            "its incoming edges are false")
    return rerun


def _find_step(state: RunState, wanted: str) -> StepRecord:
    """By its id — for code functions the user's step id (`name`) or its hash — in the recorded run."""
    if wanted in state.steps:
        return state.steps[wanted]
    named = [s for s in state.steps.values() if s.name == wanted]
    if not named:
        known = sorted(s.name or s.step_id for s in state.steps.values())
        raise NotFoundError(f"run {state.run.id} has no step {wanted!r}; its steps: {known}")
    return named[0]


def _kept(step: StepRecord) -> StepWrite:
    return StepWrite(step.step_id, step.status, name=step.name, kind=step.kind, output=step.output,
                     error=step.error, attempts=step.attempts, ended_at=step.ended_at)


def _ancestors(fn: FunctionDef, step_id: str) -> set[str]:
    found: set[str] = set()
    todo = [edge.step for edge in fn.steps[step_id].after]
    while todo:
        parent = todo.pop()
        if parent not in found:
            found.add(parent)
            todo += [edge.step for edge in fn.steps[parent].after]
    return found


def _first_jobs(fn: FunctionDef, original: RunState, kept: dict[str, StepRecord], now: int) -> list[NewJob]:
    """What runs first after the kept steps: roots not kept, and what the planner starts once they are done."""
    jobs = [NewJob(sid, now) for sid in fn.roots if sid not in kept]
    if kept:
        state = RunState(run=original.run, event=original.event, steps=dict(kept))
        decision = advance_workflow(fn, state, StepUpdate(status=StepStatus.COMPLETED, ended_at=now),
                                    next(iter(kept)), now)
        jobs += [job for job in decision.jobs if job.step_id not in kept]
    return jobs
