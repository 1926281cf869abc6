"""Durable API endpoints: steps inside ordinary HTTP handlers, checkpointed in the background, turning
asynchronous when they must wait.

    from stepflow import endpoints

    provider = endpoints.setup(domain="api.example.com", client=client)
    web_app.middlewares.append(provider.aiohttp_middleware)          # or app.add_middleware(provider.asgi)

    @endpoints.durable(id="checkout", omit_request_body=True)
    async def checkout(request, step):
        charge = await step.run("charge", charge_card, ...)
        await step.sleep("settle", "2s")                               # the handler turns asynchronous here
        receipt = await step.run("receipt", send_receipt, charge)
        return web.json_response(receipt)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any

from stepflow.endpoints.core import (
    OPTIONS_ATTR,
    REDIRECT,
    TOKEN,
    USER_ATTR,
    AsyncResponse,
    EndpointOptions,
    Provider,
    current_call,
    update_omit_response_body,
)
from stepflow.errors import ConfigError

DEFAULT_DEV_URL = "http://127.0.0.1:8288"


def setup(domain: str, *, client: Any = None, base_url: str | None = None, signing_key: str | None = None,
          signing_key_fallback: str | None = None, track_all_endpoints: bool = False,
          async_response: AsyncResponse = REDIRECT, dev: bool | None = None,
          before: list[Callable[[Any], Any]] | None = None,
          after: list[Callable[[Any, Any], Any]] | None = None) -> Provider:
    """Configure durable endpoints for the API served at `domain` ("api.example.com", https, or a URL with
    its scheme, e.g. "http://127.0.0.1:8000" in development).

    The stepflow server and key come from `client` (a stepflow.Client), else the arguments, else
    STEPFLOW_BASE_URL / STEPFLOW_SIGNING_KEY(_FALLBACK). Dev mode (STEPFLOW_DEV=1 or dev=True) defaults the
    server to http://127.0.0.1:8288 and accepts unsigned resume calls.
    """
    env = os.environ
    dev = dev if dev is not None else env.get("STEPFLOW_DEV", "").lower() in ("1", "true", "yes")
    url = base_url or (client.base_url if client is not None else None) or env.get("STEPFLOW_BASE_URL") or (
        DEFAULT_DEV_URL if dev else None)
    if not url:
        raise ConfigError("endpoints.setup needs the stepflow server: client=, base_url= or "
                          "STEPFLOW_BASE_URL (or dev mode)")
    key = signing_key or (client.signing_key if client is not None else None) or env.get("STEPFLOW_SIGNING_KEY")
    if not key and not dev:
        raise ConfigError("endpoints.setup needs a signing key outside dev mode (STEPFLOW_SIGNING_KEY)")
    return Provider(domain=domain, base_url=url.rstrip("/"), signing_key=key,
                    signing_key_fallback=signing_key_fallback or env.get("STEPFLOW_SIGNING_KEY_FALLBACK"),
                    track_all_endpoints=track_all_endpoints, async_response=async_response, dev=dev,
                    before=list(before or []), after=list(after or []))


def durable(id: str | None = None, *, omit_request_body: bool = False, omit_response_body: bool = False,
            async_response: AsyncResponse | None = None) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Make an `async def handler(request, step)` durable. `id` defaults to "METHOD /path" and is required
    when the path carries identifiers."""
    options = EndpointOptions(id=id, omit_request_body=omit_request_body, omit_response_body=omit_response_body,
                              async_response=async_response)

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Any:
        async def endpoint(request: Any) -> Any:
            # aiohttp: the middleware runs the handler itself (it reads the marks below) and never calls this;
            # ASGI frameworks call this, under the ASGI middleware
            from stepflow.endpoints.asgi import run_durable_asgi

            return await run_durable_asgi(handler, options, request)

        endpoint.__name__ = handler.__name__
        endpoint.__qualname__ = handler.__qualname__
        endpoint.__doc__ = handler.__doc__
        endpoint.__module__ = handler.__module__
        # frameworks that inspect signatures (FastAPI) see only `request`; `step` is supplied by stepflow
        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               annotation=_request_annotation(handler))])
        setattr(endpoint, OPTIONS_ATTR, options)
        setattr(endpoint, USER_ATTR, handler)
        return endpoint

    return decorate


def _request_annotation(handler: Callable[..., Any]) -> Any:
    try:  # resolved, so a framework evaluating it elsewhere does not meet a bare string
        params = list(inspect.signature(handler, eval_str=True).parameters.values())
    except (NameError, TypeError):
        params = list(inspect.signature(handler).parameters.values())
    return params[0].annotation if params else inspect.Parameter.empty


__all__ = ["REDIRECT", "TOKEN", "EndpointOptions", "Provider", "current_call", "durable", "setup",
           "update_omit_response_body"]
