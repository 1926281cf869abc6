"""Durable endpoints, engine side: checkpoints sent by the endpoint middleware become runs and steps.

A request to a durable endpoint is a run of a code function whose runtime is the endpoint itself (http, with
`X-Stepflow-Resume`): while the request executes, the middleware checkpoints in the background —

    {"op": "run", "run_id", "fn_id", "app_id", "url", "method", "event": {…}, "idempotency"?, "started_at"}
    {"op": "steps", "run_id", "steps": [StepRun op, …]}
    {"op": "async", "run_id", "ops": [Sleep | WaitForEvent | StepError | StepPlanned …]}
    {"op": "response", "run_id", "result": {"status_code", "headers", "body"?, "duration_ms"}}

— and once it goes asynchronous the engine drives it like any code function, calling the endpoint again with
the memoized steps. Every checkpoint is idempotent, so the middleware may safely send one again.
"""

from __future__ import annotations

from typing import Any

from stepflow.definitions import parse_function
from stepflow.engine import code
from stepflow.engine.runs import new_run
from stepflow.errors import InvalidRequestError
from stepflow.ids import is_ulid, now_ms
from stepflow.store.records import Advance, EventRecord, RunState, RunStatus, StepStatus, StepWrite
from stepflow.protocol.wire import Op

RESUME_HEADER = "X-Stepflow-Resume"
REQUEST_EVENT = "http/request"


class EndpointCheckpoints:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def apply(self, checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for checkpoint in checkpoints:
            if not isinstance(checkpoint, dict) or "op" not in checkpoint:
                raise InvalidRequestError("each checkpoint needs an 'op' (run, steps, async or response)")
            run_id = str(checkpoint.get("run_id", ""))
            if not is_ulid(run_id):
                raise InvalidRequestError(f"checkpoint {checkpoint['op']!r}: 'run_id' must be a ULID")
            handler = getattr(self, f"_{checkpoint['op']}", None)
            if handler is None:
                raise InvalidRequestError(f"unknown checkpoint op {checkpoint['op']!r}")
            results.append(await handler(run_id.upper(), checkpoint))
        self.engine.wake()
        return results

    async def _run(self, run_id: str, cp: dict[str, Any]) -> dict[str, Any]:
        fn_id, app_id, url = cp.get("fn_id"), cp.get("app_id"), cp.get("url")
        if not all(isinstance(v, str) and v for v in (fn_id, app_id, url)):
            raise InvalidRequestError("a 'run' checkpoint needs fn_id, app_id and url")
        fn = parse_function({"id": _function_id(str(fn_id)), "name": fn_id, "app_id": app_id, "triggers": [],
                             "runtime": {"type": "http", "url": url, "headers": {RESUME_HEADER: "1"}}},
                            source=f"durable endpoint {fn_id} at {url}")
        found = self.engine.functions.get_active(fn.id)
        if found is None or found[1].to_config() != fn.to_config():
            # an endpoint served from a new domain or port is a new version of the same endpoint function
            await self.engine.functions.register(fn, allow_app_change=True)
        version, fn = self.engine.functions.get_active(fn.id)
        now = now_ms()
        event = cp.get("event") or {}
        record = EventRecord(id=run_id, name=REQUEST_EVENT, data=event.get("data") or {}, ts=now, received_at=now)
        run = new_run(fn, version, record.to_dict(), now)
        run.run_id, run.jobs = run_id, []  # the request is executing it right now: no call to schedule
        if cp.get("idempotency"):
            run.idempotency_key = str(cp["idempotency"])
        created = await self.engine.store.create_run(record, run, int(cp.get("started_at") or now))
        return {"op": "run", "run_id": run_id, "function_id": fn.id, "created": created}

    async def _steps(self, run_id: str, cp: dict[str, Any]) -> dict[str, Any]:
        now = now_ms()
        writes = [StepWrite(str(op["id"]), StepStatus.COMPLETED, name=str(op.get("displayName") or op["id"]),
                            kind="run", output={"data": op.get("data")}, ended_at=now, attempts=1)
                  for op in cp.get("steps") or [] if isinstance(op, dict) and op.get("op") == Op.STEP_RUN]

        def advance(state: RunState) -> Advance:
            done = {sid for sid, s in state.steps.items() if s.status is StepStatus.COMPLETED}
            return Advance(steps=[w for w in writes if w.step_id not in done])  # idempotent: once per step

        run = await self.engine.store.advance_run(run_id, advance, now)
        return {"op": "steps", "run_id": run_id, "known": run is not None}

    async def _async(self, run_id: str, cp: dict[str, Any]) -> dict[str, Any]:
        """The handler reached a sleep, a wait or a failing step: from here the engine drives the run."""
        run = await self.engine.store.get_run(run_id)
        if run is None:
            raise InvalidRequestError(f"run {run_id} has no 'run' checkpoint yet")
        fn = await self.engine.functions.get(run.function_id, run.function_version)
        now = now_ms()
        executor = self.engine.executor
        cc = code.CallContext(fn, self.engine.functions, attempt=int(cp.get("attempt") or 0),
                              max_attempts=fn.attempts_for(""), target=None, call_started=int(cp.get("started_at")
                                                                                                 or now),
                              now=now, max_output_bytes=executor.config.max_output_bytes, backoff=executor.backoff,
                              fast_forward=executor.config.fast_forward)

        def advance(state: RunState) -> Advance:
            if state.run.status.is_terminal or state.pending_jobs or state.pending_pauses:
                return Advance()  # already handed over (a repeated checkpoint)
            return code.advance_after_call(state, cc, _ops_response(cp.get("ops") or []), None, True, None)

        await self.engine.store.advance_run(run_id, advance, now)
        return {"op": "async", "run_id": run_id}

    async def _response(self, run_id: str, cp: dict[str, Any]) -> dict[str, Any]:
        result = cp.get("result") or {}

        def advance(state: RunState) -> Advance:
            if state.run.status.is_terminal:
                return Advance()
            return Advance(finish=RunStatus.COMPLETED, output=result)

        run = await self.engine.store.advance_run(run_id, advance, now_ms())
        return {"op": "response", "run_id": run_id, "known": run is not None}


def _ops_response(ops: list[Any]) -> Any:
    from stepflow.protocol.contract import StepResponse

    return StepResponse(status=206, body=ops)


def _function_id(fn_id: str) -> str:
    """'POST /checkout' → 'POST-checkout': function ids are URL-safe; the name keeps the original."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in fn_id).strip("-")
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    return cleaned[:128] or "endpoint"
