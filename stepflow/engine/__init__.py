"""The engine: plans runs, queues their steps, executes them through runtimes and records every result.

It never imports the SDK: it only knows function definitions, the Store and the Runtime protocol. Its one
class is `EngineCore`; `stepflow.Engine` is the embedded facade around it (SDK apps, workflow functions and
the client's calls in one process).
"""

from typing import Any

from stepflow.engine.config import EngineConfig
from stepflow.engine.engine import EngineCore
from stepflow.engine.registry import FunctionRegistry

__all__ = ["EngineConfig", "EngineCore", "FunctionRegistry"]


def __getattr__(name: str) -> Any:
    if name == "Engine":  # the core's name before it was told apart from stepflow.Engine
        import warnings

        warnings.warn("stepflow.engine.Engine is now stepflow.engine.EngineCore (stepflow.Engine is the embedded "
                      "engine)", DeprecationWarning, stacklevel=2)
        return EngineCore
    raise AttributeError(f"module 'stepflow.engine' has no attribute {name!r}")
