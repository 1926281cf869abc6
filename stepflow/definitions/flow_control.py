"""Flow control in function definitions: concurrency, throttle, rate limit, debounce, batching, priority and
singleton — what each means, checked at load with messages that name the field.

Inngest applies them in this order, and so does stepflow: rate limiting and batching before a run is scheduled;
debounce and singleton when it is scheduled; throttling and concurrency when its steps execute. Keys are CEL over
`event`; their values group runs (`event.data.tenant_id` gives each tenant its own limit). A key that cannot be
evaluated for an event (a missing field) puts the run in the group of the empty key, so it is still limited.

Workflow files and `@app.function(...)` use snake_case (`rate_limit`, `batch_events`, `max_size`); the Inngest
sync's camelCase is translated in stepflow/server/sync.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stepflow import codec
from stepflow.durations import parse_duration
from stepflow.errors import ExpressionError
from stepflow.expressions import Expression

CONCURRENCY_SCOPES = ("function", "app", "all")
SINGLETON_MODES = ("skip", "cancel")
MAX_PRIORITY_SECONDS = 600
FIELDS = ("concurrency", "throttle", "rate_limit", "debounce", "batch_events", "priority", "singleton")
# the controls the engine carries out; the others are refused at load rather than accepted and ignored
ENFORCED = frozenset(FIELDS)


def key_value(key: Expression | None, event: dict[str, Any]) -> str:
    """The group a run falls in: the key's value as text ("" without a key, or when it cannot be evaluated)."""
    if key is None:
        return ""
    try:
        value = key.evaluate({"event": event})
    except ExpressionError:
        return ""
    if isinstance(value, str):
        return value
    return codec.dumps(value).decode()


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """At most `limit` steps executing at once among the runs sharing a key, within `scope`: this function's
    runs, its app's, or every function's on the server. Runs sleeping or waiting hold no slot."""

    limit: int
    key: Expression | None = None
    scope: str = "function"

    def slot(self, function_id: str, app_id: str, event: dict[str, Any]) -> str:
        """The slot's name in the store: the scope, whose runs share it, and the key's value."""
        owner = {"function": f"f:{function_id}", "app": f"a:{app_id}", "all": "*"}[self.scope]
        return f"{owner}:{key_value(self.key, event)}"

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"limit": self.limit}
        if self.key is not None:
            out["key"] = self.key.source
        if self.scope != "function":
            out["scope"] = self.scope
        return out


@dataclass(frozen=True, slots=True)
class Throttle:
    """At most `limit` run starts per `period` (+ `burst` at once), per key; the rest wait, FIFO, none dropped."""

    limit: int
    period: float
    burst: int = 0
    key: Expression | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"limit": self.limit, "period": self.period}
        if self.burst:
            out["burst"] = self.burst
        if self.key is not None:
            out["key"] = self.key.source
        return out


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` runs per `period` per key; the events beyond it start no run (the skip is recorded)."""

    limit: int
    period: float
    key: Expression | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"limit": self.limit, "period": self.period}
        if self.key is not None:
            out["key"] = self.key.source
        return out


@dataclass(frozen=True, slots=True)
class Debounce:
    """A burst of events starts one run, `period` after the last of them, with the last event; `timeout` bounds
    how long the first event of a burst may wait."""

    period: float
    key: Expression | None = None
    timeout: float | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"period": self.period}
        if self.key is not None:
            out["key"] = self.key.source
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclass(frozen=True, slots=True)
class Batching:
    """Events collected into one run (Input `events`); it starts when `max_size` are in, or `timeout` after the
    first."""

    max_size: int
    timeout: float
    key: Expression | None = None
    condition: Expression | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_size": self.max_size, "timeout": self.timeout}
        if self.key is not None:
            out["key"] = self.key.source
        if self.condition is not None:
            out["if"] = self.condition.source
        return out


@dataclass(frozen=True, slots=True)
class Priority:
    """`run`: CEL over `event` giving seconds in [-600, 600]; a run's steps go ahead of the steps of runs
    enqueued up to that many seconds earlier (or behind, when negative)."""

    run: Expression

    def seconds(self, event: dict[str, Any]) -> int:
        try:
            value = self.run.evaluate({"event": event})
        except ExpressionError:
            return 0  # no priority rather than no run
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return 0
        return int(max(-MAX_PRIORITY_SECONDS, min(MAX_PRIORITY_SECONDS, value)))

    def to_config(self) -> dict[str, Any]:
        return {"run": self.run.source}


@dataclass(frozen=True, slots=True)
class Singleton:
    """At most one active run per key: a new event is skipped, or (`cancel`) cancels the active run and starts."""

    mode: str = "skip"
    key: Expression | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.key is not None:
            out["key"] = self.key.source
        return out


@dataclass(frozen=True, slots=True)
class FlowControl:
    concurrency: tuple[ConcurrencyLimit, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    batch_events: Batching | None = None
    priority: Priority | None = None
    singleton: Singleton | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.concurrency:
            out["concurrency"] = [c.to_config() for c in self.concurrency]
        for name in FIELDS[1:]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_config()
        return out

    def __bool__(self) -> bool:
        return bool(self.concurrency) or any(getattr(self, name) is not None for name in FIELDS[1:])


def parse_flow_control(config: dict[str, Any], fail: Any) -> FlowControl:
    """The flow-control fields of a function definition; `fail(problem)` makes the error to raise."""
    parsed: dict[str, Any] = {}
    for name in FIELDS:
        raw = config.get(name)
        if raw is None or raw == []:
            continue
        if name not in ENFORCED:
            raise fail(f"'{name}' is not carried out by this version of stepflow yet; remove it (a limit that "
                       "is not enforced would be worse than none)")
        parsed[name] = _PARSERS[name](raw, _Fields(name, fail))
    return FlowControl(**parsed)


class _Fields:
    """Reads one control's object, naming `control.field` in every error."""

    def __init__(self, control: str, fail: Any) -> None:
        self.control = control
        self.fail = fail

    def error(self, field: str | None, problem: str) -> Exception:
        where = f"{self.control}.{field}" if field else self.control
        return self.fail(f"'{where}' {problem}")  # type: ignore[no-any-return]

    def object(self, raw: Any, allowed: set[str], shape: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(None, f"must be an object: {shape}")
        unknown = set(raw) - allowed
        if unknown:
            raise self.error(None, f"has unknown field(s) {sorted(unknown)}; expected some of {sorted(allowed)}")
        return raw

    def whole(self, raw: dict[str, Any], field: str, *, low: int, high: int, default: int | None = None) -> int:
        value = raw.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(field, f"must be a whole number from {low} to {high:,}, got {value!r}")
        return value

    def duration(self, raw: dict[str, Any], field: str, *, low: float, high: float,
                 required: bool = True) -> float | None:
        if raw.get(field) is None:
            if required:
                raise self.error(field, "is required: a duration such as '1s', '30s' or '1h'")
            return None
        try:
            seconds = parse_duration(raw[field])
        except ValueError as exc:
            raise self.error(field, f"is not a duration: {exc}") from None
        if not low <= seconds <= high:
            raise self.error(field, f"must be between {_human(low)} and {_human(high)}, got {_human(seconds)}")
        return seconds

    def expression(self, raw: dict[str, Any], field: str, *, required: bool = False) -> Expression | None:
        source = raw.get(field)
        if source is None:
            if required:
                raise self.error(field, "is required: a CEL expression over `event`")
            return None
        try:
            return Expression(source)
        except ExpressionError as exc:
            raise self.error(field, f"is not a valid expression: {exc.message}") from None


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


WEEK = 7 * 86400.0


def _concurrency(raw: Any, f: _Fields) -> tuple[ConcurrencyLimit, ...]:
    items = [raw] if isinstance(raw, (dict, int)) else raw
    if not isinstance(items, list) or not 1 <= len(items) <= 2:
        raise f.error(None, "must be a limit, {\"limit\", \"key\"?, \"scope\"?}, or a list of up to two of them")
    limits: list[ConcurrencyLimit] = []
    for n, item in enumerate(items):
        sub = _Fields(f"concurrency[{n}]" if len(items) > 1 else "concurrency", f.fail)
        if isinstance(item, int) and not isinstance(item, bool):
            item = {"limit": item}
        item = sub.object(item, {"limit", "key", "scope"}, '{"limit": N, "key"?: CEL, "scope"?: '
                                                           '"function"|"app"|"all"}')
        scope = item.get("scope", "function")
        if scope not in CONCURRENCY_SCOPES:
            raise sub.error("scope", f"must be one of {', '.join(CONCURRENCY_SCOPES)}, got {scope!r}")
        key = sub.expression(item, "key")
        limits.append(ConcurrencyLimit(limit=sub.whole(item, "limit", low=1, high=100_000), key=key, scope=scope))
    if len(limits) == 2 and limits[0].to_config() == limits[1].to_config():
        raise f.error(None, "declares the same limit twice")
    return tuple(limits)


def _throttle(raw: Any, f: _Fields) -> Throttle:
    item = f.object(raw, {"limit", "period", "burst", "key"},
                    '{"limit": N, "period": "1s".."7d", "burst"?: N, "key"?: CEL}')
    period = f.duration(item, "period", low=1, high=WEEK)
    assert period is not None
    return Throttle(limit=f.whole(item, "limit", low=1, high=1_000_000), period=period,
                    burst=f.whole(item, "burst", low=0, high=100_000, default=0), key=f.expression(item, "key"))


def _rate_limit(raw: Any, f: _Fields) -> RateLimit:
    item = f.object(raw, {"limit", "period", "key"}, '{"limit": N, "period": "1s".."24h", "key"?: CEL}')
    period = f.duration(item, "period", low=1, high=86400)
    assert period is not None
    return RateLimit(limit=f.whole(item, "limit", low=1, high=1_000_000), period=period,
                     key=f.expression(item, "key"))


def _debounce(raw: Any, f: _Fields) -> Debounce:
    item = f.object(raw, {"period", "key", "timeout"}, '{"period": "1s".."7d", "key"?: CEL, "timeout"?: duration}')
    period = f.duration(item, "period", low=1, high=WEEK)
    assert period is not None
    timeout = f.duration(item, "timeout", low=1, high=WEEK, required=False)
    if timeout is not None and timeout < period:
        raise f.error("timeout", f"({_human(timeout)}) must not be shorter than 'period' ({_human(period)})")
    return Debounce(period=period, key=f.expression(item, "key"), timeout=timeout)


def _batch_events(raw: Any, f: _Fields) -> Batching:
    item = f.object(raw, {"max_size", "timeout", "key", "if"},
                    '{"max_size": N, "timeout": "1s".."60s", "key"?: CEL, "if"?: CEL}')
    timeout = f.duration(item, "timeout", low=1, high=60)
    assert timeout is not None
    return Batching(max_size=f.whole(item, "max_size", low=1, high=1000), timeout=timeout,
                    key=f.expression(item, "key"), condition=f.expression(item, "if"))


def _priority(raw: Any, f: _Fields) -> Priority:
    item = f.object(raw, {"run"}, '{"run": CEL giving seconds in [-600, 600]}')
    run = f.expression(item, "run", required=True)
    assert run is not None
    return Priority(run=run)


def _singleton(raw: Any, f: _Fields) -> Singleton:
    item = f.object(raw, {"mode", "key"}, '{"mode": "skip"|"cancel", "key"?: CEL}')
    mode = item.get("mode", "skip")
    if mode not in SINGLETON_MODES:
        raise f.error("mode", f"must be one of {', '.join(SINGLETON_MODES)}, got {mode!r}")
    return Singleton(mode=mode, key=f.expression(item, "key"))


_PARSERS: dict[str, Any] = {"concurrency": _concurrency, "throttle": _throttle, "rate_limit": _rate_limit,
                            "debounce": _debounce, "batch_events": _batch_events, "priority": _priority,
                            "singleton": _singleton}
