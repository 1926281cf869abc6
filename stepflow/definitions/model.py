"""The in-memory model of functions. Immutable once built; built only through `parse_function`, which checks
everything (so the engine never meets a definition it cannot run)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from stepflow.definitions.flow_control import FlowControl
from stepflow.expressions import Expression

RUNTIME_TYPES = ("http", "inprocess", "docker", "lambda")
DEFAULT_RETRIES = 4  # retries after the first attempt: 5 attempts in all, as Inngest does


@dataclass(frozen=True, slots=True)
class Trigger:
    """An event name (exact or `prefix/*`) with an optional CEL filter, or a cron schedule."""

    event: str | None = None
    expression: Expression | None = None
    cron: str | None = None

    def matches(self, name: str, event: dict[str, Any]) -> bool:
        if self.event is None:
            return False
        if self.event.endswith("/*") or self.event == "*":
            prefix = self.event[:-1]
            if not name.startswith(prefix):
                return False
        elif name != self.event:
            return False
        if self.expression is None:
            return True
        return self.expression.is_true({"event": event})

    def to_config(self) -> dict[str, Any]:
        if self.cron is not None:
            return {"cron": self.cron}
        out: dict[str, Any] = {"event": self.event}
        if self.expression is not None:
            out["if"] = self.expression.source
        return out


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times a failed (5xx / no answer) step is tried again. `attempts` = 1 + retries."""

    attempts: int = DEFAULT_RETRIES + 1


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    type: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        return {"type": self.type, **self.options}


@dataclass(frozen=True, slots=True)
class Edge:
    """`after` entry: run the child after `step`, if `condition` holds, `wait` seconds later."""

    step: str
    condition: Expression | None = None
    wait: float = 0.0
    wait_source: str | float | None = None  # as written ("2s"), or seconds when given as a number

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step}
        if self.condition is not None:
            out["if"] = self.condition.source
        if self.wait_source is not None:
            out["wait"] = self.wait_source
        return out


@dataclass(frozen=True, slots=True)
class StepDef:
    id: str
    runtime: RuntimeSpec
    after: tuple[Edge, ...] = ()
    retries: RetryPolicy | None = None
    timeout: float | None = None
    output: bool = False
    name: str | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runtime": self.runtime.to_config()}
        if self.name:
            out["name"] = self.name
        if self.after:
            out["after"] = [edge.to_config() for edge in self.after]
        if self.retries is not None:
            out["retries"] = {"attempts": self.retries.attempts}
        if self.timeout is not None:
            # seconds as a number: f"{t:g}s" would write "1e+06s" for long timeouts, which does not parse back
            out["timeout"] = self.timeout
        if self.output:
            out["output"] = True
        return out


@dataclass(frozen=True, slots=True)
class CancelOn:
    """Cancel a running function when this event arrives and `expression` (CEL over `event`, the run's
    trigger, and `async`, the new event) holds."""

    event: str
    expression: str | None = None
    timeout: float | None = None     # seconds after the run starts during which the event cancels it

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event}
        if self.expression is not None:
            out["if"] = self.expression
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclass(frozen=True, slots=True)
class FunctionDef:
    """A function: either a workflow (a DAG of `steps`, each reached through its own runtime) or code (an SDK
    function reached through `runtime`, driven by the SDK protocol)."""

    id: str
    name: str
    triggers: tuple[Trigger, ...]
    steps: dict[str, StepDef]
    app_id: str = "default"
    retries: RetryPolicy = RetryPolicy()
    source: str | None = None
    kind: str = "workflow"                      # "workflow" | "code"
    runtime: RuntimeSpec | None = None          # code functions: where the SDK serves the function
    cancel_on: tuple[CancelOn, ...] = ()
    idempotency: Expression | None = None       # CEL over `event`: one run per key per 24 h
    start_timeout: float | None = None          # seconds a run may stay queued
    finish_timeout: float | None = None         # seconds a run may take once started
    flow: FlowControl = FlowControl()            # concurrency, throttle, rate limit, debounce, … (flow_control.py)
    # derived: children of each step, and the steps that run right after the trigger
    children: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    roots: tuple[str, ...] = field(default=(), compare=False)
    output_step: str | None = field(default=None, compare=False)

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "app_id": self.app_id,
            "triggers": [t.to_config() for t in self.triggers],
        }
        if self.kind == "code":
            assert self.runtime is not None
            out["runtime"] = self.runtime.to_config()
        else:
            out["steps"] = {sid: s.to_config() for sid, s in self.steps.items()}
        if self.retries != RetryPolicy():
            out["retries"] = {"attempts": self.retries.attempts}
        if self.cancel_on:
            out["cancel_on"] = [c.to_config() for c in self.cancel_on]
        if self.idempotency is not None:
            out["idempotency"] = self.idempotency.source
        if self.start_timeout is not None or self.finish_timeout is not None:
            out["timeouts"] = {k: v for k, v in (("start", self.start_timeout), ("finish", self.finish_timeout))
                               if v is not None}
        out.update(self.flow.to_config())
        return out

    @property
    def is_code(self) -> bool:
        return self.kind == "code"

    def attempts_for(self, step_id: str) -> int:
        step = self.steps.get(step_id)
        return (step.retries if step is not None and step.retries else self.retries).attempts

    def matches(self, name: str, event: dict[str, Any]) -> bool:
        return any(t.matches(name, event) for t in self.triggers)


def event(name: str, *, if_: str | None = None) -> dict[str, Any]:
    """A trigger on an event name (`"app/thing.done"` or `"app/*"`), optionally filtered by CEL."""
    out: dict[str, Any] = {"event": name}
    if if_ is not None:
        out["if"] = if_
    return out


def cron(schedule: str) -> dict[str, Any]:
    """A cron trigger, e.g. `"*/5 * * * *"` or `"TZ=Europe/Paris 0 9 * * 1-5"`."""
    return {"cron": schedule}


def workflow(id: str, *, steps: dict[str, dict[str, Any]], triggers: list[dict[str, Any]],
             name: str | None = None, app_id: str = "default",
             retries: int | dict[str, int] | None = None) -> FunctionDef:
    """Declare a workflow function from Python, with the same shape (and the same checks) as a workflow file."""
    from stepflow.definitions.loader import parse_function

    config: dict[str, Any] = {"id": id, "name": name or id, "triggers": triggers, "steps": steps,
                              "app_id": app_id}
    if retries is not None:
        config["retries"] = retries
    # Name the declaring file and line as the source, so an invalid declaration's error says where it is.
    caller = sys._getframe(1)
    return parse_function(config, source=f"{caller.f_code.co_filename}:{caller.f_lineno}")
