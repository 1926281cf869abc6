"""Function definitions: what a function is, what triggers it, and how workflow files are read and checked."""

from stepflow.definitions.loader import load_function_file, parse_function, parse_runtime
from stepflow.definitions.model import (
    Edge,
    FunctionDef,
    RetryPolicy,
    RuntimeSpec,
    StepDef,
    Trigger,
    cron,
    event,
    workflow,
)

__all__ = [
    "Edge",
    "FunctionDef",
    "RetryPolicy",
    "RuntimeSpec",
    "StepDef",
    "Trigger",
    "cron",
    "event",
    "load_function_file",
    "parse_function",
    "parse_runtime",
    "workflow",
]
