"""Retry timing: exponential backoff with jitter, capped; an explicit Retry-After wins."""

from __future__ import annotations

import random

RETRY_AFTER_MAX = 24 * 3600.0  # a step may ask to be retried up to a day later; beyond that is a mistake


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt number `attempt + 1` (attempt is the 0-based one that just failed).

    `Retry-After` is honoured as given (it is the step's own word on when to come back), bounded only by
    RETRY_AFTER_MAX, not by the backoff cap.
    """
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_MAX)
    ceiling = min(cap, base * (2 ** attempt))
    # "equal jitter": never less than half the ceiling, so retries do not collapse onto each other
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))
