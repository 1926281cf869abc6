"""Turning step results into JSON and back, with their types.

A step's value is stored as JSON. On replay it is typed back from `output_type=` or the step callable's
return annotation: dataclasses (nested too), Pydantic models, tuples, lists and dicts of those.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import orjson

from stepflow import codec


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # Pydantic v2
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable; return JSON-like data, a dataclass or a "
                    "Pydantic model from a step")


def to_json_value(value: Any) -> Any:
    """The JSON-compatible form of a step's value (what is stored and what a replay sees)."""
    return orjson.loads(orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS))


def encode(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)


def decode_as(value: Any, annotation: Any) -> Any:
    """Type a JSON value back to `annotation`. Unknown or loose annotations return the value as is."""
    if annotation is None or annotation is Any or value is None:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return decode_as(value, arg)
            except (TypeError, ValueError):
                continue
        return value
    if origin in (list, typing.List) and isinstance(value, list):  # noqa: UP006
        return [decode_as(v, args[0]) for v in value] if args else value
    if origin in (tuple, typing.Tuple) and isinstance(value, list):  # noqa: UP006
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode_as(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return tuple(decode_as(v, a) for v, a in zip(value, args))
        return tuple(value)
    if origin in (dict, typing.Dict) and isinstance(value, dict) and len(args) == 2:  # noqa: UP006
        return {k: decode_as(v, args[1]) for k, v in value.items()}
    if annotation is tuple and isinstance(value, list):
        return tuple(value)
    if isinstance(annotation, type):
        validate = getattr(annotation, "model_validate", None)  # Pydantic v2
        if callable(validate):
            return validate(value)
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            hints = typing.get_type_hints(annotation)
            kwargs = {f.name: decode_as(value[f.name], hints.get(f.name)) for f in dataclasses.fields(annotation)
                      if f.name in value}
            return annotation(**kwargs)
    return value


def return_annotation(fn: Any) -> Any:
    """The declared return type of a callable (unwrapping Awaitable/Coroutine), or None."""
    if not getattr(fn, "__annotations__", None):
        return None  # lambdas and unannotated callables: nothing to resolve
    code = getattr(fn, "__code__", None)
    if code is not None:
        cached = _ANNOTATIONS.get(code, _MISSING)
        if cached is not _MISSING:
            return cached
        _ANNOTATIONS[code] = result = _resolve_return(fn)
        return result
    return _resolve_return(fn)


_MISSING = object()
_ANNOTATIONS: dict[Any, Any] = {}  # by code object: closures made per call share it


def _resolve_return(fn: Any) -> Any:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations just mean "untyped"
        return None
    annotation = hints.get("return")
    origin = typing.get_origin(annotation)
    if origin is not None and getattr(origin, "__name__", "") in ("Coroutine", "Awaitable"):
        args = typing.get_args(annotation)
        annotation = args[-1] if args else None
    return annotation


__all__ = ["codec", "decode_as", "encode", "return_annotation", "to_json_value"]
