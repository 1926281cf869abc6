"""In-process step of the scale-out crash test: each execution inserts a row into a side table, so the test
can count side effects per (run, step) and tell which worker process ran them."""

from __future__ import annotations

import os
from typing import Any

import asyncpg

_pool: asyncpg.Pool | None = None


async def record(payload: dict[str, Any]) -> dict[str, Any]:
    global _pool
    if _pool is None:
        _pool = await asyncpg.create_pool(os.environ["CRASH_TEST_DSN"], min_size=1, max_size=8,
                                          server_settings={"search_path": os.environ["CRASH_TEST_SCHEMA"]})
    ctx = payload["ctx"]
    await _pool.execute("INSERT INTO side_effects (run_id, step_id, pid) VALUES ($1, $2, $3)",
                        ctx["run_id"], ctx["step_id"], os.getpid())
    return {"status": 200, "body": {"step": ctx["step_id"], "pid": os.getpid()}}
