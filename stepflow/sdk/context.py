"""What a function receives: `ctx.event`, `ctx.events`, `ctx.run_id`, `ctx.attempt`, `ctx.step`, `ctx.logger`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepflow.sdk.steps import StepTools


@dataclass(frozen=True, slots=True)
class Event:
    """An event as a function sees it: attribute access to `id`, `name`, `data`, `ts`, `user`, `v`."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    ts: int | None = None
    user: dict[str, Any] | None = None
    v: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Event:
        raw = raw or {}
        return cls(name=str(raw.get("name", "")), data=raw.get("data") or {}, id=raw.get("id"), ts=raw.get("ts"),
                   user=raw.get("user"), v=raw.get("v"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "data": self.data}
        for key in ("id", "ts", "user", "v"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class ReplaySafeLogger:
    """A logger that stays quiet while the function replays steps it already ran, so each line is written
    once per run, not once per call."""

    def __init__(self, logger: logging.Logger, is_replaying: Callable[[], bool],
                 capture: Callable[[int, str], None] | None = None) -> None:
        self._logger = logger
        self._is_replaying = is_replaying
        self._capture = capture  # the call's collector: each line is also kept with the step it was written in

    def _log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if not self._is_replaying():
            kwargs.setdefault("stacklevel", 3)
            self._logger.log(level, msg, *args, **kwargs)
            if self._capture is not None:
                try:
                    text = msg % args if args else str(msg)
                except (TypeError, ValueError):
                    text = f"{msg} {args}"
                self._capture(level, text)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, *args, **kwargs)


@dataclass(slots=True)
class Context:
    """The argument of every stepflow function."""

    event: Event
    events: list[Event]
    run_id: str
    function_id: str
    app_id: str
    attempt: int
    step: StepTools
    logger: ReplaySafeLogger
