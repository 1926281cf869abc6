"""Identifiers. Runs and server-made events use ULIDs: sortable by creation time, 26 Crockford base32 chars."""

from __future__ import annotations

import re
import time

from ulid import ULID

_ULID_RE = re.compile(r"^[0-9A-HJKMNP-TVW-Z]{26}$", re.IGNORECASE)
# Sender-given event ids are free-form (Inngest accepts any string) but must stay printable, URL-safe and short.
_EVENT_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_ulid() -> str:
    return str(ULID())


def is_ulid(value: str) -> bool:
    return bool(_ULID_RE.match(value))


def is_valid_event_id(value: str) -> bool:
    return bool(_EVENT_ID_RE.match(value))


def now_ms() -> int:
    return time.time_ns() // 1_000_000
