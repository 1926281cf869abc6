"""Runs one Python step or one SDK function call from an Input document and returns the Response.

In a container: `python -m stepflow.kit.entrypoint '<Input JSON>'` (or `@/path/to/input.json`, the large-Input
form), with the target in $STEPFLOW_TARGET: `module:function` (a step: called with the Input dict, returns a
Response or a bare body) or `module:app` (an SDK App: the function named by the Input's ctx.function_id, or by
$STEPFLOW_FUNCTION, is called under the SDK protocol — 206 ops and all, as over HTTP). The Response is
printed to stdout as one JSON line; the exit code is 0 for 2xx and 206, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from stepflow.errors import TargetError


def load_target(target: str) -> Any:
    """`pkg.module:attr` or `path/to/file.py:attr`."""
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise TargetError(f"target {target!r} must be 'module:attribute' or 'file.py:attribute'")
    if module_name.endswith(".py"):
        path = Path(module_name)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise TargetError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise TargetError(f"{module_name} has no attribute {attr!r}") from None


def read_input(argument: str) -> dict[str, Any]:
    if argument.startswith("@"):
        return json.loads(Path(argument[1:]).read_text())  # type: ignore[no-any-return]
    return json.loads(argument)  # type: ignore[no-any-return]


def _error(status: int, exc: BaseException) -> dict[str, Any]:
    return {"status": status, "body": {"name": type(exc).__name__, "message": str(exc),
                                       "stack": "".join(traceback.format_exception(exc))}}


async def run(target: Any, document: dict[str, Any], function_id: str | None = None) -> dict[str, Any]:
    """The Response for `document`: SDK apps answer under the SDK protocol, plain callables as a step."""
    call = getattr(target, "call", None)
    if call is not None and hasattr(target, "functions"):  # an SDK App
        fn_id = function_id or os.environ.get("STEPFLOW_FUNCTION") or (document.get("ctx") or {}).get("function_id")
        if not fn_id and len(target.functions) == 1:
            fn_id = next(iter(target.functions))
        reply = await call(str(fn_id), document)
        return {"status": reply.status, "body": reply.body, "headers": reply.headers}
    try:
        result = target(document)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        no_retry = type(exc).__name__ == "NonRetriableError"
        return _error(400 if no_retry else 500, exc)
    if isinstance(result, dict) and ("status" in result or "statusCode" in result):
        return result
    return {"status": 200, "body": result}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    target_name = os.environ.get("STEPFLOW_TARGET")
    if not target_name or len(argv) < 2:
        print(json.dumps({"status": 500, "body": {"message": "usage: STEPFLOW_TARGET=module:attr "
                                                             "entrypoint '<Input JSON>' | @file"}}))
        return 1
    try:
        target = load_target(target_name)
        document = read_input(argv[1])
    except Exception as exc:  # a broken image or Input: not something a retry fixes
        print(json.dumps(_error(400, exc)))
        return 1
    response = asyncio.run(run(target, document))
    print(json.dumps(response, default=str))
    status = int(response.get("status", response.get("statusCode", 200)))
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
