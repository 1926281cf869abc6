"""Flow control across real processes sharing a PostgreSQL database: an API process (`stepflow serve
--no-workers`) and two `stepflow worker` processes. The step server, in this test, records how many calls of each
key run at once: a concurrency limit holds between the two workers, and a throttle spaces run starts across
them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, StepServer
from flow_support import Recorder
from process_support import serve_and_workers

pytestmark = [pytest.mark.runs_once,  # PostgreSQL by construction
              pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")]


async def test_limits_hold_between_two_worker_processes(tmp_path: Path, step_server: StepServer) -> None:
    limited, paced = Recorder(hold=0.2), Recorder(hold=0.0)
    functions = tmp_path / "functions.json"
    functions.write_text(json.dumps({"functions": [
        {"id": "limited", "triggers": [{"event": "f/limited"}], "concurrency": [{"limit": 2, "key": "event.data.key"}],
         "steps": {"s": {"runtime": {"type": "http", "url": step_server.route("/limited", limited)}}}},
        {"id": "paced", "triggers": [{"event": "f/paced"}], "throttle": {"limit": 2, "period": "2s"},
         "steps": {"s": {"runtime": {"type": "http", "url": step_server.route("/paced", paced)}}}},
    ]}))
    async with serve_and_workers(tmp_path, functions, 2, "--concurrency", "16") as cluster:
        sent_at = time.monotonic()
        ids = await cluster.send([{"name": "f/limited", "data": {"key": key, "n": n}} for key in ("a", "b")
                                  for n in range(10)])
        ids += await cluster.send([{"name": "f/paced", "data": {"n": n}} for n in range(5)])

        async def ended() -> int:
            count = 0
            for event_id in ids:
                async with cluster.http.get(f"{cluster.url}/v1/events/{event_id}/runs") as resp:
                    count += sum(1 for r in (await resp.json())["data"] if r["status"] == "Completed")
            return count

        deadline = time.monotonic() + 60
        while await ended() < len(ids):
            assert time.monotonic() < deadline, cluster.log.read_text()
            await asyncio.sleep(0.2)
        assert cluster.alive(), cluster.log.read_text()
    # concurrency: two of each key at once between the two workers, never more (each had 16 free slots); each
    # step executed once (a wake racing a claim once undid the claim's lease, and the step ran twice)
    runs = [run for _, _, _, run, _ in limited.spans]
    assert sorted(runs) == sorted(set(runs)) and len(runs) == 20, sorted(limited.spans)
    assert dict(limited.most) == {"a": 2, "b": 2}, sorted(limited.spans)
    # throttle: 2 per 2 s — two at once, then one a second, across both workers
    starts = sorted(at - sent_at for at, _, _ in paced.started)
    assert len(starts) == 5 and starts[2] >= 0.9 and starts[4] >= 2.9, starts
