"""The wire protocol, in one place: what every runtime, the engine, the SDK and the durable endpoints say to
each other.

- `wire`: the SDK protocol (the public Inngest SDK protocol plus stepflow's ops) — opcodes, header names, the
  call Input, the memo format, the call URL.
- `contract`: the step contract's Input and Response documents, and the canonical JSON that is signed.
- `answers`: the one function that interprets any runtime's answer (`interpret`), the 1 MiB limit, no-retry
  and retry-after.
- `signing`: `X-Inngest-Signature` and the signing-key forms the SDKs send.
"""

from stepflow.errors import MalformedResponse, StepAttemptError
from stepflow.protocol.answers import Delivery, StepAnswer, interpret, parse_retry_after
from stepflow.protocol.contract import (
    DEFAULT_MAX_OUTPUT_BYTES,
    StepContext,
    StepResponse,
    build_input,
    canonical_json,
)
from stepflow.protocol.wire import Op, hash_step_id

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "Delivery", "MalformedResponse", "Op", "StepAnswer", "StepAttemptError",
           "StepContext", "StepResponse", "build_input", "canonical_json", "hash_step_id", "interpret",
           "parse_retry_after"]
