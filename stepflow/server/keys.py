"""What a production server's keys must be (`stepflow serve`): refused at start, with what to do instead."""

from __future__ import annotations

import re

from stepflow.errors import ConfigError

# The signing key signs every step request and guards the REST API; the event key only admits events. Both
# are bearer secrets: long enough that guessing is hopeless (`openssl rand -hex 32` gives 64 characters).
MIN_SIGNING_KEY_LENGTH = 32   # characters, not counting a `signkey-<env>-` prefix
MIN_EVENT_KEY_LENGTH = 16
_PREFIX = re.compile(r"^signkey-\w+-")
_MAKE_ONE = "generate one with `openssl rand -hex 32`"


def check_production_keys(signing_keys: list[str], event_keys: list[str]) -> None:
    """Raise ConfigError naming the problem with the first bad key."""
    for which, key in zip(("signing key", "fallback signing key"), signing_keys, strict=False):
        _check(which, key, len(_PREFIX.sub("", key)), MIN_SIGNING_KEY_LENGTH,
               " (not counting a signkey-<env>- prefix)")
    for key in event_keys:
        _check("event key", key, len(key), MIN_EVENT_KEY_LENGTH, "")
        if key in signing_keys:
            raise ConfigError("the event key is the signing key: anyone who may send events could then sign step "
                              "requests and read every run. Use a different secret for each; " + _MAKE_ONE)


def _check(which: str, key: str, length: int, minimum: int, note: str) -> None:
    if not key.strip():
        raise ConfigError(f"the {which} is empty or only whitespace; {_MAKE_ONE}")
    if key != key.strip() or any(ch.isspace() for ch in key):
        raise ConfigError(f"the {which} contains whitespace (a copy-paste slip?); remove it")
    if length < minimum:
        raise ConfigError(f"the {which} is {length} characters{note}; at least {minimum} are required — "
                          f"{_MAKE_ONE}")
