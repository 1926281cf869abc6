"""Engine settings, with the defaults a production user would expect."""

from __future__ import annotations

import os
from dataclasses import dataclass

from stepflow.protocol.contract import DEFAULT_MAX_OUTPUT_BYTES


@dataclass(slots=True)
class EngineConfig:
    concurrency: int = 100               # steps executing at once in this process
    lease_seconds: float = 30.0          # how long a claimed job stays ours without renewal
    poll_interval: float = 1.0           # the longest the engine sleeps without looking for due work
    backoff_base: float = 1.0            # first retry after ~base seconds, then doubling, with jitter
    backoff_max: float = 600.0
    step_timeout: float = 900.0          # default per-attempt timeout (15 min), overridable per step
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    signing_key: str | None = None       # signs requests to step servers (X-Inngest-Signature)
    environment_id: str = "local"
    # traces: a span per step attempt kept with the run, and `traceparent` to steps (docs/observability.md);
    # STEPFLOW_TRACING=off turns both off (runs then have no trace, and steps get no traceparent)
    tracing: bool = True
    metrics: bool = True                 # Prometheus metrics (STEPFLOW_METRICS=off: none are recorded)
    # Testing: sleeps end at once, waits for events time out at once unless a matching event was sent since
    # the run was created (see stepflow.testing). Never for production.
    fast_forward: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> EngineConfig:
        """Defaults, then STEPFLOW_* environment variables, then explicit overrides."""
        config = cls()
        env = os.environ
        if "STEPFLOW_CONCURRENCY" in env:
            config.concurrency = int(env["STEPFLOW_CONCURRENCY"])
        if "STEPFLOW_BACKOFF_BASE" in env:
            config.backoff_base = float(env["STEPFLOW_BACKOFF_BASE"])
        if "STEPFLOW_STEP_TIMEOUT" in env:
            config.step_timeout = float(env["STEPFLOW_STEP_TIMEOUT"])
        if "STEPFLOW_MAX_OUTPUT_BYTES" in env:
            config.max_output_bytes = int(env["STEPFLOW_MAX_OUTPUT_BYTES"])
        if "STEPFLOW_LEASE_SECONDS" in env:
            config.lease_seconds = float(env["STEPFLOW_LEASE_SECONDS"])
        if env.get("STEPFLOW_TRACING", "").lower() in ("off", "0", "false", "no"):
            config.tracing = False
        if env.get("STEPFLOW_METRICS", "").lower() in ("off", "0", "false", "no"):
            config.metrics = False
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        return config
