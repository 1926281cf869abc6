"""stepflow: a durable step-execution runtime for Python.

Events trigger functions; functions are made of steps; each step runs in-process, behind an HTTP endpoint,
in a container or in a Lambda, always with the same Input `{event, steps, ctx}` and an HTTP-like answer
`{status, body}`. Every result is stored durably.

    import stepflow

    app = stepflow.App("imports")

    @app.function(id="process-csv-upload", trigger=stepflow.event("imports/csv.uploaded"))
    async def process_csv(ctx: stepflow.Context) -> dict:
        rows = await ctx.step.run("download", download, ctx.event.data["file"])
        ...

The names below are loaded on first use (PEP 562): `import stepflow` alone, as an SDK app or a durable
endpoint needs it, loads no engine, store, server or runtime module; `stepflow.Engine` or `stepflow.run`
loads the engine then. `tests/test_import_layers.py` keeps it so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stepflow.errors import ApiError, DefinitionError, RunFailedError, StepflowError, WaitTimeoutError

if TYPE_CHECKING:
    from stepflow.client import Client, SyncClient
    from stepflow.definitions import FunctionDef, cron, event, load_function_file, parse_function, workflow
    from stepflow.embedded import Engine, run
    from stepflow.engine import EngineConfig
    from stepflow.sdk import (
        App,
        Context,
        Event,
        NonDeterminismError,
        NonRetriableError,
        RetryAfterError,
        StepError,
    )

__version__ = "0.1.0"

# public name -> the module it is loaded from, on first use
_LAZY: dict[str, str] = {
    "Client": "stepflow.client", "SyncClient": "stepflow.client",
    "FunctionDef": "stepflow.definitions", "cron": "stepflow.definitions", "event": "stepflow.definitions",
    "load_function_file": "stepflow.definitions", "parse_function": "stepflow.definitions",
    "workflow": "stepflow.definitions",
    "Engine": "stepflow.embedded", "run": "stepflow.embedded",
    "EngineConfig": "stepflow.engine",
    "App": "stepflow.sdk", "Context": "stepflow.sdk", "Event": "stepflow.sdk",
    "NonDeterminismError": "stepflow.sdk", "NonRetriableError": "stepflow.sdk",
    "RetryAfterError": "stepflow.sdk", "StepError": "stepflow.sdk",
}


def __getattr__(name: str) -> Any:
    """A public name, loaded (and kept) on first use; else a submodule (`stepflow.server`, …), as when this
    package imported them all eagerly."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ApiError", "App", "Client", "Context", "DefinitionError", "Engine", "EngineConfig", "Event", "FunctionDef",
    "NonDeterminismError", "NonRetriableError", "RetryAfterError", "RunFailedError", "StepError", "StepflowError",
    "SyncClient", "WaitTimeoutError", "cron", "event", "load_function_file", "parse_function", "run", "workflow",
]
