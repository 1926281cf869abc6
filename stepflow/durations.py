"""Durations as people write them: "500ms", "2s", "1m30s", "15m", "1h", "1d", a number of seconds or a timedelta."""

from __future__ import annotations

import re
from datetime import timedelta

from stepflow.errors import InvalidDurationError

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: str | float | timedelta) -> float:
    """Return seconds. Raises InvalidDurationError (a ValueError) with a readable message on anything else."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidDurationError(f"invalid duration {value!r}")
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos = 0
        seconds = 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise InvalidDurationError(f"invalid duration {value!r}: expected e.g. '500ms', '2s', '1m30s', '15m', "
                                       "'1h', '1d'")
    else:
        raise InvalidDurationError(f"invalid duration {value!r}")
    if seconds < 0:
        raise InvalidDurationError(f"invalid duration {value!r}: must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
