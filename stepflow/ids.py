"""Identifiers. Runs and server-made events use ULIDs: sortable by creation time, 26 Crockford base32 chars."""

from __future__ import annotations

import re
import time

from ulid import ULID

# the first character is 0-7: 26 base32 characters hold 130 bits, a ULID 128
_ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)
# Sender-given event ids are free-form (Inngest accepts any string) but must stay printable, URL-safe and short.
_EVENT_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_ulid() -> str:
    return str(ULID())


def ulid_floor(ms: int) -> str:
    """The smallest ULID of millisecond `ms`: run ids are ULIDs of their creation, so a time range of runs is an id
    range, answered from the primary key."""
    return str(ULID(max(0, min(ms, 2**48 - 1)).to_bytes(6, "big") + bytes(10)))


def is_ulid(value: str) -> bool:
    return _ULID_RE.fullmatch(value) is not None  # fullmatch: `$` would accept a trailing newline


def is_valid_event_id(value: str) -> bool:
    return _EVENT_ID_RE.fullmatch(value) is not None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def control_character(text: str) -> str | None:
    """The first control character in `text` (as U+XXXX), or None. Names and ids are printable text: U+0000
    cannot even be stored in a PostgreSQL text column, so every backend refuses them alike, at the API."""
    for ch in text:
        if ord(ch) < 32 or 127 <= ord(ch) < 160:
            return f"U+{ord(ch):04X}"
    return None
