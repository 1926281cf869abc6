"""The Python API client: send events, read runs and steps, cancel, and wait for output.

    async with stepflow.Client("http://127.0.0.1:8288", signing_key=..., event_key=...) as client:
        ids = await client.send({"name": "imports/csv.uploaded", "data": {...}})
        output = await client.wait_for_output(ids[0], timeout=60)

`SyncClient` offers the same calls, blocking, for scripts.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

import aiohttp

from stepflow import codec
from stepflow.errors import ApiError, RunFailedError, WaitTimeoutError
from stepflow.ids import is_ulid

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8288"
_TERMINAL = {"Completed", "Failed", "Cancelled"}
_LONG_POLL = 30.0


class Client:
    def __init__(self, base_url: str | None = None, *, signing_key: str | None = None,
                 event_key: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = (base_url or os.environ.get("STEPFLOW_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.signing_key = signing_key if signing_key is not None else os.environ.get("STEPFLOW_SIGNING_KEY")
        self.event_key = event_key if event_key is not None else os.environ.get("STEPFLOW_EVENT_KEY")
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.signing_key}"} if self.signing_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def _request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                       timeout: float | None = None) -> Any:
        data = codec.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._http().request(
                    method, self.base_url + path, data=data, headers=headers,
                    params={k: str(v) for k, v in (params or {}).items() if v is not None},
                    timeout=aiohttp.ClientTimeout(total=timeout or self._timeout)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    code, message = "http_error", raw.decode(errors="replace")[:500]
                    try:
                        document = codec.loads(raw)
                        err = document["error"]
                        if isinstance(err, str):  # the SDK-facing routes' shape: {"error": message, "code"}
                            code, message = document.get("code", code), err
                        else:
                            code, message = err["code"], err["message"]
                    except (codec.JSONDecodeError, KeyError, TypeError):
                        pass
                    raise ApiError(resp.status, code, message)
                return codec.loads(raw) if raw else None
        except aiohttp.ClientConnectionError as exc:
            raise ApiError(0, "unreachable", f"cannot reach stepflow at {self.base_url}: {exc}") from exc

    # --- events -------------------------------------------------------------------------------------------

    async def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """Send one event or a list; returns the event ids (ULIDs unless you gave ids)."""
        key = self.event_key or "dev"
        result = await self._request("POST", f"/e/{key}", body=events)
        return list(result["ids"])

    async def get_event(self, event_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/events/{event_id}"))["data"]  # type: ignore[no-any-return]

    async def list_events(self, *, name: str | None = None, since: datetime | None = None,
                          until: datetime | None = None, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of events, newest received first: `{"data": [...], "cursor", "has_more"}`."""
        params = {"name": name, "received_after": since.isoformat() if since else None,
                  "received_before": until.isoformat() if until else None, "cursor": cursor, "limit": limit}
        return await self._request("GET", "/v1/events", params=params)  # type: ignore[no-any-return]

    async def get_event_runs(self, event_id: str) -> list[dict[str, Any]]:
        return (await self._request("GET", f"/v1/events/{event_id}/runs"))["data"]  # type: ignore[no-any-return]

    # --- runs ---------------------------------------------------------------------------------------------

    async def get_run(self, run_id: str, *, wait: float | None = None) -> dict[str, Any]:
        params = {"wait": f"{wait:g}s"} if wait else None
        timeout = (wait or 0) + self._timeout
        return (await self._request("GET", f"/v1/runs/{run_id}", params=params, timeout=timeout))["data"]  # type: ignore[no-any-return]

    async def get_run_steps(self, run_id: str) -> list[dict[str, Any]]:
        return (await self._request("GET", f"/v1/runs/{run_id}/steps"))["data"]  # type: ignore[no-any-return]

    async def invoke(self, function_id: str, data: dict[str, Any] | None = None) -> str:
        """Start one run of a function with `data` (its event: `inngest/function.invoked`); returns the run id."""
        answer = await self._request("POST", f"/v2/functions/{function_id}/invoke", body={"data": data or {}})
        return str(answer["data"]["run_id"])

    async def cancel_many(self, function_id: str, *, since: datetime | None = None, until: datetime | None = None,
                          if_: str | None = None) -> dict[str, Any]:
        """Start a durable bulk cancel of the function's runs created in [since, until) that have not ended (and
        whose event satisfies the CEL `if_`); returns the operation — follow it with `get_cancellation`."""
        body: dict[str, Any] = {"function_id": function_id}
        if since is not None:
            body["from"] = since.isoformat()
        if until is not None:
            body["until"] = until.isoformat()
        if if_ is not None:
            body["if"] = if_
        return (await self._request("POST", "/v2/cancellations", body=body))["data"]  # type: ignore[no-any-return]

    async def list_functions(self) -> list[dict[str, Any]]:
        """The functions the server runs, sorted by id: app, kind, version, triggers, paused or not."""
        return (await self._request("GET", "/v1/functions"))["data"]  # type: ignore[no-any-return]

    async def pause(self, function_id: str) -> dict[str, Any]:
        """Pause a function: its runs are kept, PAUSED, until `resume`."""
        return (await self._request("POST", f"/v2/functions/{function_id}/pause", body={}))[  # type: ignore[no-any-return]
            "data"]

    async def resume(self, function_id: str, *, cancel_paused: bool = False) -> dict[str, Any]:
        """Resume a paused function: its paused runs go on in order (or, with `cancel_paused`, are cancelled)."""
        return (await self._request("POST", f"/v2/functions/{function_id}/resume",  # type: ignore[no-any-return]
                                    body={"cancel_paused": cancel_paused}))["data"]

    async def replay(self, function_id: str, *, since: datetime | None = None, until: datetime | None = None,
                     statuses: list[str] | None = None, event_name: str | None = None,
                     rate: int | None = None) -> dict[str, Any]:
        """Start a durable replay into the function (see `POST /v2/replays`); follow it with `get_replay`."""
        body: dict[str, Any] = {"function_id": function_id}
        for key, value in (("from", since.isoformat() if since else None),
                           ("to", until.isoformat() if until else None), ("statuses", statuses),
                           ("event_name", event_name), ("rate", rate)):
            if value is not None:
                body[key] = value
        return (await self._request("POST", "/v2/replays", body=body))["data"]  # type: ignore[no-any-return]

    async def get_replay(self, operation_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v2/replays/{operation_id}"))["data"]  # type: ignore[no-any-return]

    async def stop_replay(self, operation_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v2/replays/{operation_id}"))["data"]  # type: ignore[no-any-return]

    async def get_cancellation(self, operation_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v2/cancellations/{operation_id}"))["data"]  # type: ignore[no-any-return]

    async def stop_cancellation(self, operation_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v2/cancellations/{operation_id}"))[  # type: ignore[no-any-return]
            "data"]

    async def rerun(self, run_id: str, *, from_step: str | None = None) -> dict[str, Any]:
        """Rerun a run that has ended (from a step: keeping what came before it); returns the new run."""
        body = {"from_step": from_step} if from_step else {}
        answer = await self._request("POST", f"/v2/runs/{run_id}/rerun", body=body)
        return dict(answer["data"])

    async def list_runs(self, *, status: str | None = None, function_id: str | None = None,
                        event_name: str | None = None, original_run_id: str | None = None,
                        since: datetime | None = None, until: datetime | None = None, query: str | None = None,
                        cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        """One page, newest first: `{"data": [...], "cursor": next page or None, "has_more": bool}`. Every filter
        given must hold; `since`/`until` bound when the runs were created (aware datetimes); `query` is CEL over
        `event`, `output` and `run` (the page then also has `search`: runs scanned, evaluation errors)."""
        params = {"status": status, "function_id": function_id, "event_name": event_name,
                  "original_run_id": original_run_id, "from": since.isoformat() if since else None,
                  "until": until.isoformat() if until else None, "query": query, "cursor": cursor, "limit": limit}
        return await self._request("GET", "/v1/runs", params=params)  # type: ignore[no-any-return]

    async def cancel(self, run_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v1/runs/{run_id}"))["data"]  # type: ignore[no-any-return]

    async def wait_for_run(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The run once it ended (any end). Raises WaitTimeoutError if it is still going after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            run = await self.get_run(run_id, wait=max(0.001, min(remaining, _LONG_POLL)))
            if run["status"] in _TERMINAL:
                return run
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(run_id, run["status"], timeout)

    async def wait_for_output(self, id: str, timeout: float = 60.0) -> Any:
        """Wait for a run (by run id, or the first run of an event id) and return its output.

        Raises RunFailedError (with the run's status and error) if it failed or was cancelled, and
        WaitTimeoutError if it has not ended in time.
        """
        deadline = time.monotonic() + timeout
        run_id = id
        if not is_ulid(id) or not await self._is_run(id):
            runs = await self.get_event_runs(id)
            while not runs:  # the event may have matched nothing yet, or not been processed
                if time.monotonic() >= deadline:
                    raise WaitTimeoutError(None, None, timeout)
                await asyncio.sleep(0.05)
                runs = await self.get_event_runs(id)
            run_id = runs[0]["run_id"]
        try:
            run = await self.wait_for_run(run_id, max(0.001, deadline - time.monotonic()))
        except WaitTimeoutError as exc:
            # name the caller's timeout, not the remainder left after finding the event's run
            raise WaitTimeoutError(run_id, exc.run_status, timeout) from None
        if run["status"] != "Completed":
            raise RunFailedError(run_id, run["status"], run.get("error"))
        return run["output"]

    async def _is_run(self, run_id: str) -> bool:
        try:
            await self.get_run(run_id)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise


class SyncClient:
    """Blocking wrapper around `Client` for scripts: the same calls, on a private event loop thread."""

    def __init__(self, base_url: str | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stepflow-client", daemon=True)
        self._thread.start()
        self._client = Client(base_url, **kwargs)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        return self._call(self._client.send(events))

    def get_event(self, event_id: str) -> dict[str, Any]:
        return self._call(self._client.get_event(event_id))

    def list_events(self, **kwargs: Any) -> dict[str, Any]:
        return self._call(self._client.list_events(**kwargs))

    def get_event_runs(self, event_id: str) -> list[dict[str, Any]]:
        return self._call(self._client.get_event_runs(event_id))

    def get_run(self, run_id: str, *, wait: float | None = None) -> dict[str, Any]:
        return self._call(self._client.get_run(run_id, wait=wait))

    def get_run_steps(self, run_id: str) -> list[dict[str, Any]]:
        return self._call(self._client.get_run_steps(run_id))

    def invoke(self, function_id: str, data: dict[str, Any] | None = None) -> str:
        return self._call(self._client.invoke(function_id, data))

    def cancel_many(self, function_id: str, **kwargs: Any) -> dict[str, Any]:
        return self._call(self._client.cancel_many(function_id, **kwargs))

    def list_functions(self) -> list[dict[str, Any]]:
        return self._call(self._client.list_functions())

    def pause(self, function_id: str) -> dict[str, Any]:
        return self._call(self._client.pause(function_id))

    def resume(self, function_id: str, *, cancel_paused: bool = False) -> dict[str, Any]:
        return self._call(self._client.resume(function_id, cancel_paused=cancel_paused))

    def replay(self, function_id: str, **kwargs: Any) -> dict[str, Any]:
        return self._call(self._client.replay(function_id, **kwargs))

    def get_replay(self, operation_id: str) -> dict[str, Any]:
        return self._call(self._client.get_replay(operation_id))

    def get_cancellation(self, operation_id: str) -> dict[str, Any]:
        return self._call(self._client.get_cancellation(operation_id))

    def rerun(self, run_id: str, *, from_step: str | None = None) -> dict[str, Any]:
        return self._call(self._client.rerun(run_id, from_step=from_step))

    def list_runs(self, **kwargs: Any) -> dict[str, Any]:
        return self._call(self._client.list_runs(**kwargs))

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._call(self._client.cancel(run_id))

    def wait_for_run(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self._call(self._client.wait_for_run(run_id, timeout))

    def wait_for_output(self, id: str, timeout: float = 60.0) -> Any:
        return self._call(self._client.wait_for_output(id, timeout))
