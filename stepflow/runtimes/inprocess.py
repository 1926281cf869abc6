"""The inprocess runtime: a Python callable in the engine's own process, given the Input as a dict.

The handler is named `package.module:function` in a workflow file. It may be sync (run in a thread, so it
cannot stall the engine) or async, and returns a Response (`{"status", "body"}`) or a bare body (status 200).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import traceback
from collections.abc import Callable
from typing import Any

from stepflow import codec
from stepflow.errors import StepAttemptError
from stepflow.protocol.answers import Delivery
from stepflow.runtimes.base import Invocation


class InProcessRuntime:
    type = "inprocess"

    def __init__(self, handlers: dict[str, Callable[..., Any]] | None = None) -> None:
        self._handlers: dict[str, Callable[..., Any]] = dict(handlers or {})

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def register(self, name: str, handler: Callable[..., Any]) -> None:
        self._handlers[name] = handler

    def _resolve(self, name: str) -> Callable[..., Any]:
        handler = self._handlers.get(name)
        if handler is not None:
            return handler
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            handler = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise StepAttemptError("handler_not_found", f"cannot load handler {name!r}: {exc}",
                                   retryable=False) from exc
        if not callable(handler):
            raise StepAttemptError("handler_not_found", f"handler {name!r} is a {type(handler).__name__}, not a "
                                   "function", retryable=False)
        self._handlers[name] = handler
        return handler  # type: ignore[no-any-return]

    async def invoke(self, invocation: Invocation) -> Delivery:
        handler = self._resolve(invocation.options["handler"])
        document = invocation.document if invocation.document is not None else codec.loads(invocation.input)
        try:
            if inspect.iscoroutinefunction(handler):
                result = await asyncio.wait_for(handler(document), invocation.timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(handler, document), invocation.timeout)
                if inspect.isawaitable(result):  # a plain function that returned a coroutine
                    result = await asyncio.wait_for(result, invocation.timeout)
        except TimeoutError as exc:
            raise StepAttemptError("timeout", f"handler did not return within {invocation.timeout:g}s") from exc
        except Exception as exc:
            raise StepAttemptError("handler_error", f"{type(exc).__name__}: {exc}",
                                   details={"stack": traceback.format_exc(limit=20)}) from exc
        if invocation.sdk_call and not isinstance(result, dict):
            # an SDK handler may answer with an object that has status/body/headers (e.g. SdkResponse)
            result = {"status": getattr(result, "status", 200), "body": getattr(result, "body", None),
                      "headers": getattr(result, "headers", None) or {}}
        return Delivery(document=result)
