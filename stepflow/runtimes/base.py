"""The Runtime protocol. A driver delivers the Input to a step and brings back what it answered, as bytes
(`Delivery`); `stepflow.protocol.answers.interpret` alone decides what an answer means and the executor what
follows (store, retry, fail), so every runtime follows the same rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from stepflow.errors import StepAttemptError
from stepflow.protocol.answers import Delivery
from stepflow.protocol.contract import StepContext


@dataclass(slots=True)
class Invocation:
    input: bytes                      # the encoded Input document, sent as is
    options: dict[str, Any]           # the step's runtime options (url, image, function, …)
    ctx: StepContext
    timeout: float                    # seconds
    max_output_bytes: int
    signing_key: str | None = None
    # SDK protocol call (a code function): the answer's HTTP status and JSON body are the Response as they
    # are (the body is the function's output or its ops), not a `{status, body}` document to unwrap.
    sdk_call: bool = False
    document: dict[str, Any] | None = None  # the Input, decoded, for runtimes in this process


class Runtime(Protocol):
    type: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def invoke(self, invocation: Invocation) -> Delivery: ...


@dataclass(slots=True)
class RuntimeRegistry:
    """The runtimes an engine can use, by type."""

    runtimes: dict[str, Runtime] = field(default_factory=dict)

    def add(self, runtime: Runtime) -> None:
        self.runtimes[runtime.type] = runtime

    def get(self, type_: str) -> Runtime:
        runtime = self.runtimes.get(type_)
        if runtime is None:
            raise StepAttemptError("runtime_unavailable",
                                   f"no {type_!r} runtime is configured on this engine", retryable=False)
        return runtime

    async def start(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.start()

    async def close(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.close()
