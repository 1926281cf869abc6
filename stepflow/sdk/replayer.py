"""Replay a recorded run in-process (Temporal's replayer, for stepflow code functions).

`replay(app, run_id, client=...)` fetches the run's history — its event and every step's stored result — and runs
the function's code here, in this process, with each step's result taken from the record: no step callable runs,
so a breakpoint in the function stops exactly where production went, and an exception the run ended with is
raised again (kept on `ReplayResult.exception`). When the code and the record disagree — the code reaches a step
the run never recorded while recorded steps remain, reaches a new step after the record ends, finishes without
reaching a recorded step, or ends differently than the run did — the result says where (`divergence`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from stepflow.errors import InvalidArgumentError, NonDeterminismError
from stepflow.protocol import wire
from stepflow.sdk.app import App
from stepflow.sdk.context import Context
from stepflow.sdk.execution import Execution


class RunHistory(Protocol):
    """Where the history comes from: `stepflow.Client` (a server) or an embedded `stepflow.Engine`."""

    async def get_run(self, run_id: str) -> dict[str, Any]: ...

    async def get_run_steps(self, run_id: str) -> list[dict[str, Any]]: ...

    async def get_event(self, event_id: str) -> dict[str, Any]: ...


@dataclass(slots=True)
class Divergence:
    step: str | None      # the step where the code and the record part ways (its id), when there is one
    message: str


@dataclass(slots=True)
class ReplayResult:
    run_id: str
    recorded_status: str                 # Completed | Failed | Cancelled | Running | …
    status: str                          # what the code did on replay: Completed | Failed | Diverged | Suspended
    output: Any = None
    error: dict[str, Any] | None = None
    exception: BaseException | None = None   # the exception the function raised on replay, to inspect
    divergence: Divergence | None = None
    replayed_steps: list[str] = dataclasses.field(default_factory=list)

    @property
    def matches(self) -> bool:
        """True when the code, run against the record, does what the run did."""
        return self.divergence is None


async def replay(app: App, run_id: str, *, client: RunHistory) -> ReplayResult:
    run = await client.get_run(run_id)
    spec = app.functions.get(run["function_id"])
    if spec is None:
        raise InvalidArgumentError(f"run {run_id} is of function {run['function_id']!r}, which app {app.id!r} does "
                                   f"not define (it defines {sorted(app.functions)})")
    event = await client.get_event(run["event_id"])
    recorded = [s for s in await client.get_run_steps(run_id)
                if s.get("hashed_id") and s["status"] in ("completed", "failed")]
    memos = {s["hashed_id"]: ({"data": s["output"]} if s["status"] == "completed"
                              else {"error": wire.memo_error(s["error"])}) for s in recorded}
    names = {s["hashed_id"]: s["step_id"] for s in recorded}
    raised: list[BaseException] = []

    async def handler(ctx: Context) -> Any:
        try:
            return await spec.handler(ctx)
        except BaseException as exc:
            raised.append(exc)
            raise

    request = {"event": event, "events": [event], "steps": memos,
               "ctx": {"run_id": run_id, "function_id": spec.id, "app_id": spec.app_id, "attempt": 0,
                       "stack": {"stack": list(memos)}, "step_names": names}}
    # inline_budget 0: a step the record lacks is reported, never run
    execution = Execution(dataclasses.replace(spec, handler=handler), request, inline_budget=0.0)
    response = await execution.run()
    result = ReplayResult(run_id=run_id, recorded_status=run["status"], status="Completed",
                          exception=next((e for e in raised if not isinstance(e, NonDeterminismError)), None),
                          replayed_steps=[names[h] for h in memos if h not in execution.unreached_memos])
    ended = run["status"] in ("Completed", "Failed", "Cancelled")
    if response.status == 206:
        new = [op for op in response.body if op.get("op") != "RunComplete"]
        display = str(new[0].get("displayName") or new[0].get("id")) if new else None
        result.status = "Suspended"
        if ended and run["status"] != "Cancelled":
            result.divergence = Divergence(display, f"the code reaches step {display!r}, which the run never "
                                                    f"recorded (the run ended {run['status']})")
        return result
    if response.status == 200:
        result.output = response.body
    else:
        result.status, result.error = "Failed", response.body
        if response.body.get("name") == "NonDeterminismError":
            result.status = "Diverged"
            result.divergence = Divergence(_step_in(response.body.get("message", "")), response.body["message"])
            return result
    unreached = [names[h] for h in memos if h in execution.unreached_memos]
    if unreached:
        result.divergence = Divergence(unreached[0], f"the code ended without reaching the recorded step(s) "
                                                     f"{unreached}")
    elif ended and result.status != run["status"] and run["status"] != "Cancelled":
        result.divergence = Divergence(None, f"the run ended {run['status']}, the code on replay {result.status}")
    elif result.status == "Completed" and run["status"] == "Completed" and result.output != run["output"]:
        result.divergence = Divergence(None, f"the run returned {run['output']!r}, the code on replay returns "
                                             f"{result.output!r}")
    return result


def _step_in(message: str) -> str | None:
    """The step a NonDeterminismError names first: "... reached step 'x' where ..."."""
    marker = "reached step '"
    start = message.find(marker)
    if start < 0:
        return None
    start += len(marker)
    return message[start:message.find("'", start)]
