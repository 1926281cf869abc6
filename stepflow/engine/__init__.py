"""The engine: plans runs, queues their steps, executes them through runtimes and records every result.

It never imports the SDK: it only knows function definitions, the Store and the Runtime protocol.
"""

from stepflow.engine.config import EngineConfig
from stepflow.engine.engine import Engine
from stepflow.engine.registry import FunctionRegistry

__all__ = ["Engine", "EngineConfig", "FunctionRegistry"]
