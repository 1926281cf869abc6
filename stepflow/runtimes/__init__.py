"""Runtimes: how a step is reached. One driver per runtime behind the `Runtime` protocol."""

from stepflow.errors import StepAttemptError
from stepflow.protocol.answers import Delivery
from stepflow.runtimes.base import Invocation, Runtime, RuntimeRegistry


def default_runtimes() -> list[Runtime]:
    """A driver for every runtime type (the lambda driver needs the `lambda` extra only when used)."""
    from stepflow.runtimes.aws_lambda import LambdaRuntime
    from stepflow.runtimes.docker import DockerRuntime
    from stepflow.runtimes.http import HttpRuntime
    from stepflow.runtimes.inprocess import InProcessRuntime

    return [HttpRuntime(), InProcessRuntime(), DockerRuntime(), LambdaRuntime()]


__all__ = ["Delivery", "Invocation", "Runtime", "RuntimeRegistry", "StepAttemptError", "default_runtimes"]
