"""The Python SDK: declare functions with decorators and durable steps; serve them over HTTP or run them
embedded. It imports no engine code: it speaks the SDK protocol (docs/sdk.md#the-protocol) and nothing else."""

from stepflow.errors import NonDeterminismError, NonRetriableError, RetryAfterError, StepError
from stepflow.sdk.app import App, FunctionSpec
from stepflow.sdk.context import Context, Event
from stepflow.sdk.execution import SdkResponse

__all__ = ["App", "Context", "Event", "FunctionSpec", "NonDeterminismError", "NonRetriableError",
           "RetryAfterError", "SdkResponse", "StepError"]
