"""Runtimes: how a step is reached. One driver per runtime behind the `Runtime` protocol."""

from stepflow.runtimes.base import Invocation, Runtime, StepAnswer, StepAttemptError

__all__ = ["Invocation", "Runtime", "StepAnswer", "StepAttemptError"]
