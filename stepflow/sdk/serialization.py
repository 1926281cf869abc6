"""Turning step results into JSON and back, with their types.

A step's value is stored as JSON. On replay it is typed back from `output_type=` or the step callable's
return annotation: dataclasses (nested too), Pydantic models, tuples, lists and dicts of those.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import orjson

from stepflow import codec
from stepflow.errors import SerializationError


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # Pydantic v2
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return list(value)
    # everything else pydantic can write as JSON (Decimal, Path, timedelta, …), as decode_as reads it back
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    try:
        return to_jsonable_python(value)
    except PydanticSerializationError:
        raise TypeError(f"{type(value).__name__} is not JSON serializable; return JSON-like data, a dataclass or "
                        "a Pydantic model from a step") from None


_MISSING = object()


def to_json_value(value: Any) -> Any:
    """The JSON-compatible form of a step's value (what is stored and what a replay sees)."""
    return orjson.loads(encode(value))


def encode(value: Any) -> bytes:
    """A step's value as JSON. NaN and ±Infinity have no JSON form (orjson would write `null`, and the replay
    would see None where the step returned a number): they are refused, naming where they are."""
    encoded = orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    if b"null" in encoded:  # the only way a non-finite float shows; walk the value only then
        where = _non_finite(value, "the value")
        if where is not None:
            raise SerializationError(f"{where} is not a finite number; JSON has no NaN or Infinity: return None or a "
                            "string instead")
    return encoded


def _non_finite(value: Any, path: str, depth: int = 0) -> str | None:
    if isinstance(value, float):
        return f"{path} ({value})" if not math.isfinite(value) else None
    if depth > 200:
        return None
    if isinstance(value, dict):
        items: Any = ((f"{path}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f"{path}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value))
    elif callable(getattr(value, "model_dump", None)):
        items = ((f"{path}.{k}", v) for k, v in value.model_dump().items())
    else:
        return None
    for sub_path, item in items:
        found = _non_finite(item, sub_path, depth + 1)
        if found is not None:
            return found
    return None


def decode_as(value: Any, annotation: Any) -> Any:
    """Type a JSON value back to `annotation`: dataclasses, Pydantic models, datetimes, enums, UUIDs, decimals,
    tuples, unions and containers of them, by Pydantic's TypeAdapter (the well-kept implementation of exactly
    this). Annotations it cannot handle, and values that do not fit, come back through the structural
    fallback below, or as they are."""
    if annotation is None or annotation is Any or value is None:
        return value
    adapter = _adapter(annotation)
    if adapter is not None:
        try:
            return adapter.validate_python(value)
        except ValueError:  # pydantic.ValidationError: not this type; keep the lenient path below
            pass
    return _decode_structurally(value, annotation)


_ADAPTERS: dict[Any, Any] = {}


def _adapter(annotation: Any) -> Any:
    """A cached TypeAdapter for the annotation (building one costs milliseconds), or None."""
    try:
        cached = _ADAPTERS.get(annotation, _MISSING)
    except TypeError:  # an unhashable annotation: no cache
        cached = _MISSING
    if cached is not _MISSING:
        return cached
    try:
        from pydantic import TypeAdapter

        adapter: Any = TypeAdapter(annotation)
    except Exception:  # noqa: BLE001 - pydantic cannot build a schema for it: use the structural fallback
        adapter = None
    try:
        _ADAPTERS[annotation] = adapter
    except TypeError:
        pass
    return adapter


def _decode_structurally(value: Any, annotation: Any) -> Any:
    if annotation is None or annotation is Any or value is None:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode_structurally(value, arg)
            except (TypeError, ValueError):
                continue
        return value
    if origin in (list, typing.List) and isinstance(value, list):  # noqa: UP006
        return [_decode_structurally(v, args[0]) for v in value] if args else value
    if origin in (tuple, typing.Tuple) and isinstance(value, list):  # noqa: UP006
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode_structurally(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return tuple(_decode_structurally(v, a) for v, a in zip(value, args, strict=True))
        return tuple(value)
    if origin in (dict, typing.Dict) and isinstance(value, dict) and len(args) == 2:  # noqa: UP006
        return {k: _decode_structurally(v, args[1]) for k, v in value.items()}
    if annotation is tuple and isinstance(value, list):
        return tuple(value)
    if isinstance(annotation, type):
        validate = getattr(annotation, "model_validate", None)  # Pydantic v2
        if callable(validate):
            return validate(value)
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            hints = typing.get_type_hints(annotation)
            kwargs = {f.name: _decode_structurally(value[f.name], hints.get(f.name))
                      for f in dataclasses.fields(annotation)
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
