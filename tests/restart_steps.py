"""In-process step of the operations restart tests (tests/test_operations_restart.py): answers with the event's
number, so a run's output says which event it ran for."""

from __future__ import annotations

from typing import Any


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "body": {"n": payload["event"]["data"]["n"]}}
