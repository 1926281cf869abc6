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

from stepflow.definitions import FunctionDef, parse_function
from stepflow.engine import code
from stepflow.engine.ops import op_logs
from stepflow.engine.runs import new_run
from stepflow.errors import ConflictError, InvalidRequestError
from stepflow.events import validate_event
from stepflow.ids import is_ulid, now_ms
from stepflow.observability.tracing import new_span_id, parse_traceparent
from stepflow.protocol.wire import REQUEST_EVENT, RESUME_HEADER, Op
from stepflow.store.records import Advance, EventRecord, RunState, RunStatus, SpanRecord, StepStatus, StepWrite


class EndpointCheckpoints:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        # an explicit table, not getattr: a checkpoint's `op` must never reach an arbitrary attribute
        self._handlers = {"run": self._run, "steps": self._steps, "async": self._async, "response": self._response,
                          "send": self._send}

    async def apply(self, checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for checkpoint in checkpoints:
            if not isinstance(checkpoint, dict) or "op" not in checkpoint:
                raise InvalidRequestError("each checkpoint needs an 'op' (run, steps, async or response)")
            op = checkpoint["op"]
            handler = self._handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise InvalidRequestError(f"unknown checkpoint op {str(op)[:100]!r}; expected one of "
                                          f"{', '.join(sorted(self._handlers))}")
            run_id = checkpoint.get("run_id")
            if not isinstance(run_id, str) or not is_ulid(run_id):
                raise InvalidRequestError(f"checkpoint {op!r}: 'run_id' must be a ULID")
            _check_fields(op, checkpoint)
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
        if found is not None and not is_endpoint_function(found[1]):
            # A checkpoint names a function id; it must not take over a workflow or an SDK app's function of
            # the same id (its triggers would be dropped and its events would start nothing).
            raise ConflictError(f"function {fn.id!r} is a {found[1].kind} function of app {found[1].app_id!r} "
                                f"({found[1].source}), not a durable endpoint: give the endpoint another id")
        if found is None or found[1].to_config() != fn.to_config():
            # an endpoint served from a new domain or port is a new version of the same endpoint function; one
            # of another app is refused by the registry, as two SDK apps sharing an id are
            await self.engine.functions.register(fn)
        version, fn = self.engine.functions.get_active(fn.id)
        now = now_ms()
        event = cp.get("event") or {}
        record = EventRecord(id=run_id, name=REQUEST_EVENT, data=event.get("data") or {}, ts=now, received_at=now)
        run = new_run(fn, version, record.to_dict(), now)
        run.run_id, run.jobs = run_id, []  # the request is executing it right now: no call to schedule
        trace = parse_traceparent(cp.get("traceparent"))
        if trace is not None:  # the request continues its caller's trace
            run.trace_id, run.parent_span_id = trace
        if cp.get("idempotency"):
            run.idempotency_key = str(cp["idempotency"])
        created = await self.engine.store.create_run(record, run, int(cp.get("started_at") or now))
        return {"op": "run", "run_id": run_id, "function_id": fn.id, "created": created}

    async def _steps(self, run_id: str, cp: dict[str, Any]) -> dict[str, Any]:
        now = now_ms()
        writes = [StepWrite(str(op["id"]), StepStatus.COMPLETED, name=str(op.get("displayName") or op["id"]),
                            kind="run", output={"data": op.get("data")}, ended_at=now, attempts=1,
                            logs=op_logs(op))
                  for op in cp.get("steps") or [] if isinstance(op, dict) and op.get("op") == Op.STEP_RUN]

        timings: dict[str, dict[str, Any]] = {str(op["id"]): op["timing"] for op in cp.get("steps") or []
                                              if isinstance(op, dict) and isinstance(op.get("timing"), dict)}

        def advance(state: RunState) -> Advance:
            done = {sid for sid, s in state.steps.items() if s.status is StepStatus.COMPLETED}
            new = [w for w in writes if w.step_id not in done]  # idempotent: once per step
            spans = [_step_span(state, w, timings[w.step_id]) for w in new if w.step_id in timings]
            return Advance(steps=new, spans=[s for s in spans if s is not None])

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

    async def _send(self, run_id: str, cp: dict[str, Any]) -> dict[str, Any]:
        """`step.send_event` during a request: the events are stored now, and their ids answered, so the request
        stays synchronous (the step itself is checkpointed like any other). The middleware gives each event an id
        derived from the run and the step, so sending again after a crash stores nothing twice."""
        now = now_ms()
        items = cp["events"]
        records = [validate_event(item, index=i if len(items) > 1 else None, received_at=now)
                   for i, item in enumerate(items)]
        ids = await self.engine.ingest(records)
        return {"op": "send", "run_id": run_id, "ids": ids}

    async def _response(self, run_id: str, cp: dict[str, Any]) -> dict[str, Any]:
        result = cp.get("result") or {}

        error = result.get("error")
        answered: list[str] = []  # the endpoint whose request this answers, once (a repeated checkpoint: not)

        def advance(state: RunState) -> Advance:
            if state.run.status.is_terminal:
                return Advance()
            answered.append(state.run.function_id)
            if error is not None:
                # the handler raised: its caller got a clean 500; the run is Failed, with the error
                detail = error if isinstance(error, dict) else {"message": str(error)}
                return Advance(finish=RunStatus.FAILED, output=result,
                               error={"code": "endpoint_error", **{k: v for k, v in detail.items() if k != "code"}})
            return Advance(finish=RunStatus.COMPLETED, output=result)

        run = await self.engine.store.advance_run(run_id, advance, now_ms())
        if answered:
            status = result.get("status_code")
            self.engine.metrics.endpoint_requests.labels(answered[-1], str(status) if status else "500").inc()
        return {"op": "response", "run_id": run_id, "known": run is not None}


# each checkpoint's fields and the JSON types they must have (None: may be absent or null)
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "run": {"fn_id": (str,), "app_id": (str,), "url": (str,), "method": (str, type(None)),
            "event": (dict, type(None)), "idempotency": (str, type(None)), "started_at": (int, type(None)),
            "traceparent": (str, type(None))},
    "steps": {"steps": (list,)},
    "async": {"ops": (list, type(None)), "attempt": (int, type(None)), "started_at": (int, type(None))},
    "response": {"result": (dict,)},
    "send": {"events": (list,)},
}
MAX_TIMESTAMP_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_TYPE_NAMES = {str: "a string", int: "a whole number", dict: "an object", list: "a list", type(None): "null"}


def _check_fields(op: str, checkpoint: dict[str, Any]) -> None:
    """Refuse a malformed checkpoint whole, with a message naming the field (never a 500 later)."""
    for field, types in _FIELDS[op].items():
        value = checkpoint.get(field)
        if not isinstance(value, types) or isinstance(value, bool):
            wanted = " or ".join(_TYPE_NAMES[t] for t in types)
            raise InvalidRequestError(f"checkpoint {op!r}: '{field}' must be {wanted}, got {type(value).__name__}")
        if isinstance(value, str) and any(ord(ch) < 32 for ch in value):
            raise InvalidRequestError(f"checkpoint {op!r}: '{field}' contains a control character")
    started = checkpoint.get("started_at")
    if isinstance(started, int) and not 0 <= started <= MAX_TIMESTAMP_MS:
        raise InvalidRequestError(f"checkpoint {op!r}: 'started_at' must be milliseconds since the epoch, from 0 "
                                  f"to {MAX_TIMESTAMP_MS}")
    if op == "steps":
        for i, item in enumerate(checkpoint["steps"]):
            if not isinstance(item, dict) or not isinstance(item.get("op"), str):
                raise InvalidRequestError(f"checkpoint 'steps': step #{i + 1} must be an op object with 'op'")
            if item["op"] == Op.STEP_RUN and (not isinstance(item.get("id"), str) or not item["id"]):
                raise InvalidRequestError(f"checkpoint 'steps': StepRun #{i + 1} has no 'id'")
    if op == "async":
        for i, item in enumerate(checkpoint.get("ops") or []):
            if not isinstance(item, dict):
                raise InvalidRequestError(f"checkpoint 'async': op #{i + 1} must be an object")


def _step_span(state: RunState, write: StepWrite, timing: dict[str, Any]) -> SpanRecord | None:
    """A step that ran inside the request, as a child span of the request's run."""
    start, end = timing.get("start"), timing.get("end")
    if not state.run.trace_id or not isinstance(start, int) or not isinstance(end, int):
        return None
    return SpanRecord(run_id=state.run.id, span_id=new_span_id(), parent_id=None, name=f"step {write.name}",
                      start=start, end=end, attributes={"step.id": write.name or write.step_id, "inline": True})


def is_endpoint_function(fn: FunctionDef) -> bool:
    """Durable endpoints are code functions called back with the resume header."""
    return fn.runtime is not None and RESUME_HEADER in (fn.runtime.options.get("headers") or {})


def _ops_response(ops: list[Any]) -> Any:
    from stepflow.protocol.contract import StepResponse

    return StepResponse(status=206, body=ops)


def _function_id(fn_id: str) -> str:
    """'POST /checkout' → 'POST-checkout': function ids are URL-safe; the name keeps the original."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in fn_id).strip("-")
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    return cleaned[:128] or "endpoint"
