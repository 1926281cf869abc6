"""Retry timing: exponential backoff with full jitter, capped; an explicit Retry-After wins."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt number `attempt + 1` (attempt is the 0-based one that just failed)."""
    if retry_after is not None:
        return min(retry_after, cap)
    ceiling = min(cap, base * (2 ** attempt))
    # "equal jitter": never less than half the ceiling, so retries do not collapse onto each other
    return ceiling / 2 + random.uniform(0, ceiling / 2)
