"""Deciding what happens next in a workflow run. Pure functions of the run's state: no I/O.

Trigger rule for a step with several parents: it runs once every parent is settled (completed or skipped)
and at least one incoming edge fired (parent completed and its `if` held). If none fired, the step is
skipped, and so, transitively, are the steps that only it could start. That makes both joins (A and B, then
C) and branch merges (if X then A else B, then C) work. `wait` delays the child durably: the job is stored
with a due time, so a restart does not shorten or lose it.
"""

from __future__ import annotations

from typing import Any

from stepflow.definitions import FunctionDef
from stepflow.engine.runs import new_run
from stepflow.errors import ExpressionError
from stepflow.store.records import (
    Advance,
    EventRecord,
    NewJob,
    NewRun,
    RunState,
    RunStatus,
    StepStatus,
    StepUpdate,
)


def plan_runs_for_event(matches: list[tuple[int, FunctionDef]], event: EventRecord) -> list[NewRun]:
    payload = event.to_dict()
    return [new_run(fn, version, payload, event.received_at) for version, fn in matches]


def advance_workflow(fn: FunctionDef, state: RunState, update: StepUpdate, step_id: str, now: int) -> Advance:
    """Called inside the transaction that records `update` for `step_id`."""
    if update.status is StepStatus.FAILED:
        return Advance(finish=RunStatus.FAILED, error={**(update.error or {}), "step_id": step_id})

    statuses: dict[str, StepStatus] = {sid: s.status for sid, s in state.steps.items()}
    outputs = state.completed_outputs()
    event = state.event or {}
    decision = Advance()

    changed = True
    while changed:  # skipping a step can settle its children's parents: repeat until nothing changes
        changed = False
        for sid, step in fn.steps.items():
            if sid in statuses or not step.after:
                continue
            parents = [statuses.get(edge.step) for edge in step.after]
            if not all(p is not None and p.is_settled for p in parents):
                continue
            fired_waits: list[float] = []
            for edge in step.after:
                if statuses[edge.step] is not StepStatus.COMPLETED:
                    continue
                if edge.condition is not None:
                    activation: dict[str, Any] = {"event": event, "steps": outputs,
                                                  "response": outputs.get(edge.step)}
                    try:
                        if not edge.condition.is_true(activation):
                            continue
                    except ExpressionError as exc:
                        return Advance(finish=RunStatus.FAILED, error={
                            "code": "expression_error", "step_id": sid,
                            "message": f"step {sid!r}, 'after' {edge.step!r}: {exc.message}"})
                fired_waits.append(edge.wait)
            if fired_waits:
                decision.jobs.append(NewJob(step_id=sid, available_at=now + int(max(fired_waits) * 1000)))
                statuses[sid] = StepStatus.SCHEDULED
            else:
                decision.skipped[sid] = {"code": "skipped",
                                         "message": "no 'after' edge fired (conditions false or parents skipped)"}
                statuses[sid] = StepStatus.SKIPPED
            changed = True

    if decision.jobs or not all(statuses.get(sid, StepStatus.SCHEDULED).is_settled for sid in fn.steps):
        return decision

    decision.finish = RunStatus.COMPLETED
    if fn.output_step is not None:
        chosen = outputs.get(fn.output_step)
    else:
        completed = [s for s in state.steps.values() if s.status is StepStatus.COMPLETED]
        chosen = max(completed, key=lambda s: s.seq).output if completed else None
    decision.output = chosen.get("body") if isinstance(chosen, dict) else None
    return decision
