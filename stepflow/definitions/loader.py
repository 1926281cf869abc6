"""Reading and checking function definitions (JSON or TOML files, or dicts from Python).

Everything that can be wrong with a definition is found here, at load, and reported with the file, the
function, the step and the problem — never later, in the middle of a run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from croniter import croniter

from stepflow import codec
from stepflow.definitions.flow_control import FIELDS as FLOW_FIELDS
from stepflow.definitions.flow_control import parse_flow_control
from stepflow.definitions.model import (
    DEFAULT_RETRIES,
    RUNTIME_TYPES,
    CancelOn,
    Edge,
    FunctionDef,
    RetryPolicy,
    RuntimeSpec,
    StepDef,
    Trigger,
)
from stepflow.durations import parse_duration
from stepflow.errors import DefinitionError, ExpressionError
from stepflow.expressions import Expression
from stepflow.ids import control_character

RUNTIME_OPTIONS: dict[str, set[str]] = {
    "http": {"url", "headers", "timeout"},
    "inprocess": {"handler", "timeout"},
    "docker": {"image", "command", "entrypoint", "env", "memory", "cpus", "pids", "network", "timeout",
               "workdir", "user"},
    "lambda": {"function", "qualifier", "region", "endpoint_url", "profile", "timeout"},
}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_EVENT_NAME_RE = re.compile(r"^\S{1,256}$")
_FUNCTION_KEYS = {"id", "name", "app_id", "triggers", "steps", "retries", "description", "runtime", "cancel_on",
                  "idempotency", "timeouts", *FLOW_FIELDS}
_STEP_KEYS = {"runtime", "after", "retries", "timeout", "output", "name"}
_EDGE_KEYS = {"step", "if", "wait"}


def load_function_file(path: str | Path) -> list[FunctionDef]:
    """Load every function declared in a `.json` or `.toml` file.

    A file holds one function object, a list of them, or `{"functions": [...]}` (`[[functions]]` in TOML).
    """
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DefinitionError(f"cannot read file: {exc.strerror or exc}", source=source) from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            document: Any = tomllib.loads(raw.decode())
        elif suffix == ".json":
            document = codec.loads(raw)
        else:
            raise DefinitionError("unknown file type: expected a .json or .toml file", source=source)
    except (codec.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"not valid {suffix[1:].upper()}: {exc}", source=source) from exc
    if isinstance(document, dict) and "functions" in document:
        document = document["functions"]
    items = document if isinstance(document, list) else [document]
    if not items:
        raise DefinitionError("the file declares no function", source=source)
    functions = [parse_function(item, source=source) for item in items]
    seen: set[str] = set()
    for fn in functions:
        if fn.id in seen:
            raise DefinitionError("declared twice in the same file", source=source, function=fn.id)
        seen.add(fn.id)
    return functions


def parse_function(config: Any, *, source: str = "python") -> FunctionDef:
    if not isinstance(config, dict):
        raise DefinitionError(f"a function must be an object, got {type(config).__name__}", source=source)
    fid = config.get("id")
    if not isinstance(fid, str) or not _ID_RE.match(fid):
        raise DefinitionError(
            f"'id' must be a string of letters, digits, '-', '_' or '.' (got {fid!r})", source=source)

    def fail(problem: str, step: str | None = None) -> DefinitionError:
        return DefinitionError(problem, source=source, function=fid, step=step)

    unknown = set(config) - _FUNCTION_KEYS
    if unknown:
        raise fail(f"unknown field(s) {sorted(unknown)}; expected some of {sorted(_FUNCTION_KEYS)}")
    name = config.get("name", fid)
    if not isinstance(name, str) or control_character(name):
        raise fail("'name' must be a string of printable characters")
    app_id = config.get("app_id", "default")
    if not isinstance(app_id, str) or not app_id or control_character(app_id):
        raise fail("'app_id' must be a non-empty string of printable characters")

    # code functions may have no trigger: they are started by `invoke` or, for durable endpoints, by requests
    triggers = () if "runtime" in config and config.get("triggers") == [] else _parse_triggers(
        config.get("triggers"), fail)
    retries = _parse_retries(config.get("retries"), lambda p: fail(p)) or RetryPolicy()
    options = _parse_run_options(config, fail)

    if "runtime" in config:
        if "steps" in config:
            raise fail("a function has either 'steps' (a workflow) or 'runtime' (code served by an SDK), not both")
        runtime = parse_runtime(config["runtime"], fail)
        return FunctionDef(id=fid, name=name, triggers=triggers, steps={}, app_id=app_id, retries=retries,
                           source=source, kind="code", runtime=runtime, **options)

    raw_steps = config.get("steps")
    if not isinstance(raw_steps, dict) or not raw_steps:
        raise fail("'steps' must be an object with at least one step")
    steps: dict[str, StepDef] = {}
    for sid, raw in raw_steps.items():
        if not _ID_RE.match(sid):
            raise fail("step ids must be letters, digits, '-', '_' or '.'", step=sid)
        steps[sid] = _parse_step(sid, raw, lambda p, s=sid: fail(p, step=s))

    # edges: every parent must exist; no cycles
    children: dict[str, list[str]] = {sid: [] for sid in steps}
    for sid, step in steps.items():
        seen_parents: set[str] = set()
        for edge in step.after:
            if edge.step not in steps:
                hint = ""
                close = [s for s in steps if s.lower() == edge.step.lower()]
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
                raise fail(f"'after' refers to unknown step {edge.step!r}{hint}; known steps: {sorted(steps)}",
                           step=sid)
            if edge.step == sid:
                raise fail("a step cannot run after itself", step=sid)
            if edge.step in seen_parents:
                raise fail(f"'after' names step {edge.step!r} twice", step=sid)
            seen_parents.add(edge.step)
            children[edge.step].append(sid)
    cycle = _find_cycle(steps)
    if cycle:
        raise fail(f"the steps form a cycle: {' -> '.join(cycle)}", step=cycle[0])

    outputs = [sid for sid, s in steps.items() if s.output]
    if len(outputs) > 1:
        raise fail(f"only one step may be marked \"output\": true (got {outputs})")
    roots = tuple(sid for sid, s in steps.items() if not s.after)
    return FunctionDef(
        id=fid, name=name, triggers=triggers, steps=steps, app_id=app_id, retries=retries, source=source,
        children={k: tuple(v) for k, v in children.items()}, roots=roots,
        output_step=outputs[0] if outputs else None, **options,
    )


def _parse_run_options(config: dict[str, Any], fail: Any) -> dict[str, Any]:
    """cancel_on, idempotency and timeouts: the same for workflow and code functions."""
    out: dict[str, Any] = {}
    raw_cancel = config.get("cancel_on") or []
    if isinstance(raw_cancel, dict):
        raw_cancel = [raw_cancel]
    if not isinstance(raw_cancel, list):
        raise fail("'cancel_on' must be a list of {\"event\": NAME, \"if\"?: CEL, \"timeout\"?: duration}")
    cancel_on = []
    for item in raw_cancel:
        if not isinstance(item, dict) or not isinstance(item.get("event"), str) or not item["event"]:
            raise fail("each 'cancel_on' entry needs 'event' (an event name)")
        expr = item.get("if")
        if expr is not None:
            try:
                Expression(expr)
            except ExpressionError as exc:
                raise fail(f"'cancel_on' {item['event']!r}: {exc.message}") from exc
        unknown = set(item) - {"event", "if", "timeout"}
        if unknown:
            raise fail(f"'cancel_on' {item['event']!r}: unknown field(s) {sorted(unknown)}")
        timeout = None
        if item.get("timeout") is not None:
            try:
                timeout = parse_duration(item["timeout"])
            except ValueError as exc:
                raise fail(f"'cancel_on' {item['event']!r}: 'timeout': {exc}") from exc
        cancel_on.append(CancelOn(event=item["event"], expression=expr, timeout=timeout))
    out["cancel_on"] = tuple(cancel_on)
    if config.get("idempotency") is not None:
        try:
            out["idempotency"] = Expression(config["idempotency"])
        except ExpressionError as exc:
            raise fail(f"'idempotency': {exc.message}") from exc
    timeouts = config.get("timeouts")
    if timeouts is not None:
        if not isinstance(timeouts, dict) or set(timeouts) - {"start", "finish"}:
            raise fail("'timeouts' must be {\"start\"?: duration, \"finish\"?: duration}")
        for key in ("start", "finish"):
            if timeouts.get(key) is not None:
                try:
                    out[f"{key}_timeout"] = parse_duration(timeouts[key])
                except ValueError as exc:
                    raise fail(f"'timeouts.{key}': {exc}") from exc
    out["flow"] = parse_flow_control(config, fail)
    return out


def _parse_triggers(raw: Any, fail: Any) -> tuple[Trigger, ...]:
    if not isinstance(raw, list) or not raw:
        raise fail("'triggers' must be a list with at least one trigger, e.g. [{\"event\": \"app/thing\"}]")
    triggers: list[Trigger] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise fail(f"trigger #{i + 1} must be an object")
        if "cron" in item:
            schedule = item["cron"]
            if set(item) - {"cron"}:
                raise fail(f"trigger #{i + 1}: a cron trigger takes only 'cron'")
            validate_cron(schedule, fail)
            triggers.append(Trigger(cron=schedule))
            continue
        name = item.get("event")
        if not isinstance(name, str) or not _EVENT_NAME_RE.match(name):
            raise fail(f"trigger #{i + 1} needs 'event' (an event name) or 'cron'")
        if "*" in name and not (name == "*" or (name.endswith("/*") and name.count("*") == 1)):
            raise fail(f"trigger #{i + 1}: wildcards must be a trailing '/*' (e.g. 'app/*'), got {name!r}")
        if set(item) - {"event", "if", "expression"}:
            raise fail(f"trigger #{i + 1}: unknown field(s) {sorted(set(item) - {'event', 'if', 'expression'})}")
        expr_src = item.get("if", item.get("expression"))
        expression = None
        if expr_src is not None:
            try:
                expression = Expression(expr_src)
            except ExpressionError as exc:
                raise fail(f"trigger #{i + 1}: {exc.message}") from exc
        triggers.append(Trigger(event=name, expression=expression))
    return tuple(triggers)


def validate_cron(schedule: Any, fail: Any) -> None:
    if not isinstance(schedule, str) or not schedule.strip():
        raise fail("a cron trigger needs a schedule string, e.g. '*/5 * * * *'")
    expr = schedule.strip()
    if expr.startswith(("TZ=", "CRON_TZ=")):
        tz, _, expr = expr.partition(" ")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz.split("=", 1)[1])
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise fail(f"unknown time zone in cron trigger {schedule!r}") from exc
    fields = expr.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(expr.strip(), second_at_beginning=True):
        raise fail(f"invalid cron expression {schedule!r}: expected 5 fields (minute hour day month weekday), or 6 "
                   "with seconds first (second minute hour day month weekday)")


def _parse_retries(raw: Any, fail: Any) -> RetryPolicy | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise fail("'retries' must be a number of retries or {\"attempts\": N}")
    if isinstance(raw, int):
        retries = raw
        if not 0 <= retries <= 100:
            raise fail(f"'retries' must be between 0 and 100, got {retries}")
        return RetryPolicy(attempts=retries + 1)
    if isinstance(raw, dict):
        if set(raw) - {"attempts"}:
            raise fail("'retries' takes only 'attempts'")
        attempts = raw.get("attempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 101:
            raise fail(f"'retries.attempts' must be a whole number from 1 to 101, got {attempts!r}")
        return RetryPolicy(attempts=attempts)
    raise fail("'retries' must be a number of retries or {\"attempts\": N}")


def _parse_step(sid: str, raw: Any, fail: Any) -> StepDef:
    if not isinstance(raw, dict):
        raise fail("a step must be an object with a 'runtime'")
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise fail(f"unknown field(s) {sorted(unknown)}; expected some of {sorted(_STEP_KEYS)}")
    runtime = parse_runtime(raw.get("runtime"), fail)
    after_raw = raw.get("after", [])
    if isinstance(after_raw, (str, dict)):
        after_raw = [after_raw]
    if not isinstance(after_raw, list):
        raise fail("'after' must be a list of {\"step\": ID, \"if\"?: CEL, \"wait\"?: duration}")
    edges: list[Edge] = []
    for item in after_raw:
        if isinstance(item, str):
            item = {"step": item}
        if not isinstance(item, dict) or not isinstance(item.get("step"), str):
            raise fail("each 'after' entry needs 'step' (the id of the parent step)")
        if set(item) - _EDGE_KEYS:
            raise fail(f"'after' entry: unknown field(s) {sorted(set(item) - _EDGE_KEYS)}")
        condition = None
        if item.get("if") is not None:
            try:
                condition = Expression(item["if"])
            except ExpressionError as exc:
                raise fail(f"'after' {item['step']!r}: {exc.message}") from exc
        wait = 0.0
        wait_src = item.get("wait")
        if wait_src is not None:
            try:
                wait = parse_duration(wait_src)
            except ValueError as exc:
                raise fail(f"'after' {item['step']!r}: {exc}") from exc
            # Keep what the author wrote when it is text ("2s"); otherwise keep the seconds as a number.
            # `str()` of a number ("2") or a timedelta ("0:00:02") is not a valid duration, and the stored
            # config is parsed again when an engine restarts.
            wait_src = wait_src if isinstance(wait_src, str) else wait
        edges.append(Edge(step=item["step"], condition=condition, wait=wait, wait_source=wait_src))
    timeout = None
    if raw.get("timeout") is not None:
        try:
            timeout = parse_duration(raw["timeout"])
        except ValueError as exc:
            raise fail(f"'timeout': {exc}") from exc
        if timeout <= 0:
            raise fail("'timeout' must be positive")
    output = raw.get("output", False)
    if not isinstance(output, bool):
        raise fail("'output' must be true or false")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise fail("'name' must be a string")
    return StepDef(id=sid, runtime=runtime, after=tuple(edges), retries=_parse_retries(raw.get("retries"), fail),
                   timeout=timeout, output=output, name=name)


def parse_runtime(raw: Any, fail: Any) -> RuntimeSpec:
    """A `runtime` object (`{"type": …, <options>}`) checked; `fail(problem)` makes the error to raise."""
    if not isinstance(raw, dict) or "type" not in raw:
        raise fail(f"'runtime' must be an object with a 'type' (one of {', '.join(RUNTIME_TYPES)})")
    rtype = raw["type"]
    if rtype not in RUNTIME_TYPES:
        raise fail(f"unknown runtime type {rtype!r}; expected one of {', '.join(RUNTIME_TYPES)}")
    options = {k: v for k, v in raw.items() if k != "type"}
    unknown = set(options) - RUNTIME_OPTIONS[rtype]
    if unknown:  # a typo (e.g. "endpointUrl") must not silently send a step somewhere else
        raise fail(f"unknown {rtype} runtime option(s) {sorted(unknown)}; expected some of "
                   f"{sorted(RUNTIME_OPTIONS[rtype])}")
    if rtype == "http":
        url = options.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise fail("an http runtime needs 'url', an http:// or https:// address")
        headers = options.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise fail("'runtime.headers' must map header names to strings")
    elif rtype == "docker":
        if not isinstance(options.get("image"), str) or not options["image"]:
            raise fail("a docker runtime needs 'image'")
    elif rtype == "lambda":
        if not isinstance(options.get("function"), str) or not options["function"]:
            raise fail("a lambda runtime needs 'function' (a name or ARN)")
    elif rtype == "inprocess":
        if not isinstance(options.get("handler"), str) or ":" not in options["handler"]:
            raise fail("an inprocess runtime needs 'handler', as 'package.module:function'")
    if "timeout" in options:
        try:
            seconds = parse_duration(options["timeout"])
        except ValueError as exc:
            raise fail(f"'runtime.timeout': {exc}") from exc
        if not isinstance(options["timeout"], (str, int, float)):
            options["timeout"] = seconds  # a timedelta from Python: the stored config must be plain data
    return RuntimeSpec(type=rtype, options=options)


def _find_cycle(steps: dict[str, StepDef]) -> list[str] | None:
    """Depth-first search over `after` edges; returns one cycle (first node repeated at the end) or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {sid: WHITE for sid in steps}
    stack: list[str] = []

    def visit(sid: str) -> list[str] | None:
        color[sid] = GREY
        stack.append(sid)
        for edge in steps[sid].after:
            if color[edge.step] == GREY:
                return stack[stack.index(edge.step):] + [edge.step]
            if color[edge.step] == WHITE:
                found = visit(edge.step)
                if found:
                    return found
        stack.pop()
        color[sid] = BLACK
        return None

    for sid in steps:
        if color[sid] == WHITE:
            found = visit(sid)
            if found:
                return list(reversed(found))
    return None


__all__ = ["DEFAULT_RETRIES", "load_function_file", "parse_function", "validate_cron"]
