"""In-process steps of bench/bench_scaleout.py: `scaleout_steps:step` answers at once, like bench/step_server.py.

bench_scaleout.py puts bench/ on the PYTHONPATH of every stepflow process, so the workflow file can name the
handler `scaleout_steps:step`. It is async (no thread hop), does no I/O, and returns the same small body as
the HTTP step server of bench_core.py: what is measured is the engine and its store, not the step.
"""

from __future__ import annotations

from typing import Any


async def step(payload: dict[str, Any]) -> dict[str, Any]:
    ctx = payload["ctx"]
    body = {"step": ctx["step_id"], "attempt": ctx["attempt"], "seen": sorted(payload["steps"])}
    return {"status": 200, "body": body}
