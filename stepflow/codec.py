"""Encoding helpers: JSON on the wire (orjson), msgpack at rest.

Stored payloads are msgpack because it is compact and fast; anything that came in as JSON round-trips
losslessly through it (msgpack has the same value model: maps, arrays, strings, ints, floats, bools, nil).
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """JSON-encode. Non-string dict keys are stringified, like most JSON encoders do."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def dumps_str(value: Any) -> str:
    return dumps(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes | None) -> Any:
    if data is None:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
