"""stepflow: a durable step-execution runtime for Python.

Events trigger functions; functions are made of steps; each step runs in-process, behind an HTTP endpoint,
in a container or in a Lambda, always with the same Input `{event, steps, ctx}` and an HTTP-like answer
`{status, body}`. Every result is stored durably.
"""

from stepflow.client import Client, SyncClient
from stepflow.definitions import FunctionDef, cron, event, load_function_file, parse_function, workflow
from stepflow.engine import Engine, EngineConfig
from stepflow.errors import (
    ApiError,
    DefinitionError,
    RunFailedError,
    StepflowError,
    WaitTimeoutError,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError", "Client", "DefinitionError", "Engine", "EngineConfig", "FunctionDef", "RunFailedError",
    "StepflowError", "SyncClient", "WaitTimeoutError", "cron", "event", "load_function_file", "parse_function",
    "workflow",
]
