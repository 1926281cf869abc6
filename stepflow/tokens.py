"""Run-scoped, expiring tokens for the async responses of durable endpoints.

    token = "<expiry unix seconds>.<hex HMAC-SHA256(key, run_id + "." + expiry)>"

Made by the endpoint middleware, checked by the server: both hold the signing key. Without a key (dev mode)
both sides use DEV_KEY, which protects nothing and says so in its name.
"""

from __future__ import annotations

import hashlib
import hmac
import time

DEV_KEY = "stepflow-dev-insecure"
DEFAULT_TTL = 24 * 3600.0


def make_token(run_id: str, key: str | None, ttl: float = DEFAULT_TTL, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl)
    mac = hmac.new((key or DEV_KEY).encode(), f"{run_id}.{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def check_token(token: str, run_id: str, keys: list[str], now: float | None = None) -> str | None:
    """None if valid for this run, else the reason it is not."""
    expires_text, _, mac = token.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit()) or not mac:
        return "malformed token"
    if int(expires_text) < (time.time() if now is None else now):
        return "the token has expired"
    for key in keys or [DEV_KEY]:
        expected = hmac.new(key.encode(), f"{run_id}.{expires_text}".encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode(), mac.encode()):
            return None
    return "the token is not valid for this run"
