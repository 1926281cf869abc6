"""Request signatures in the public Inngest format, so step servers and official SDKs can verify the caller.

    X-Inngest-Signature: t=<unix seconds>&s=<hex HMAC-SHA256(key, body + str(t))>

The HMAC key is the signing key with its `signkey-<env>-` prefix removed, as the official SDKs do.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from stepflow.errors import UnauthorizedError
from stepflow.protocol.wire import SIGNATURE_HEADER

__all__ = ["DEFAULT_MAX_AGE", "SIGNATURE_HEADER", "bearer_matches", "hash_signing_key", "sign", "verify"]
DEFAULT_MAX_AGE = 300.0  # seconds a signature stays acceptable; protects against replays
_PREFIX = re.compile(r"^signkey-\w+-")


def _key_bytes(signing_key: str) -> bytes:
    return _PREFIX.sub("", signing_key).encode()


def hash_signing_key(signing_key: str) -> str:
    """The form in which the official JS SDKs send a signing key as a bearer token: `signkey-<env>-` + hex
    SHA-256 of the hex-decoded key (a key that is not hex is hashed as text). The Python SDK sends the hash
    without the prefix."""
    match = _PREFIX.match(signing_key)
    prefix = match.group(0) if match else ""
    raw = signing_key[len(prefix):]
    try:
        material = bytes.fromhex(raw)
    except ValueError:
        material = raw.encode()
    return prefix + hashlib.sha256(material).hexdigest()


def bearer_matches(token: str, signing_keys: list[str]) -> bool:
    """Whether a bearer token is one of the keys, as given or in the SDKs' hashed form. Every key and form
    is compared in constant time, so timing reveals neither which key matched nor how much of it."""
    given = token.strip().encode()
    found = False
    for key in signing_keys:
        hashed = hash_signing_key(key)
        # the JS SDKs keep the `signkey-<env>-` prefix on the hash; the Python SDK sends the bare hash
        bare = _PREFIX.sub("", hashed)
        for form in (key, hashed, bare):
            found |= hmac.compare_digest(given, form.encode())
    return found


def sign(body: bytes, signing_key: str, at: float | None = None) -> str:
    t = int(time.time() if at is None else at)
    mac = hmac.new(_key_bytes(signing_key), body, hashlib.sha256)
    mac.update(str(t).encode())
    return f"t={t}&s={mac.hexdigest()}"


def verify(body: bytes, header: str | None, signing_keys: str | list[str],
           max_age: float = DEFAULT_MAX_AGE, now: float | None = None) -> None:
    """Raise UnauthorizedError unless `header` is a fresh signature of `body` by one of the keys.

    Several keys may be given to accept a fallback key during rotation.
    """
    if not header:
        raise UnauthorizedError(f"missing {SIGNATURE_HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split("&") if "=" in p)
    t_raw, sig = parts.get("t"), parts.get("s")
    if not t_raw or not sig or not (t_raw.isascii() and t_raw.isdigit()):
        raise UnauthorizedError(f"malformed {SIGNATURE_HEADER} header")
    t = int(t_raw)
    current = time.time() if now is None else now
    if abs(current - t) > max_age:
        raise UnauthorizedError(f"stale signature: signed {int(current - t)}s ago, more than {max_age:g}s")
    keys = [signing_keys] if isinstance(signing_keys, str) else signing_keys
    for key in keys:
        mac = hmac.new(_key_bytes(key), body, hashlib.sha256)
        mac.update(t_raw.encode())
        if hmac.compare_digest(mac.hexdigest().encode(), sig.encode()):
            return
    raise UnauthorizedError("signature does not match")
