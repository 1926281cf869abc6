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
"""

from stepflow.client import Client, SyncClient
from stepflow.definitions import FunctionDef, cron, event, load_function_file, parse_function, workflow
from stepflow.embedded import Engine, run
from stepflow.engine import EngineConfig
from stepflow.errors import (
    ApiError,
    DefinitionError,
    RunFailedError,
    StepflowError,
    WaitTimeoutError,
)
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

__all__ = [
    "ApiError", "App", "Client", "Context", "DefinitionError", "Engine", "EngineConfig", "Event", "FunctionDef",
    "NonDeterminismError", "NonRetriableError", "RetryAfterError", "RunFailedError", "StepError", "StepflowError",
    "SyncClient", "WaitTimeoutError", "cron", "event", "load_function_file", "parse_function", "run", "workflow",
]
