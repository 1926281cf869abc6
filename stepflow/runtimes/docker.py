"""The docker runtime: each attempt of a step is a fresh container on a Docker engine.

Contract (docs/step-contract.md): the Input is the container command's first argument (`argv[1]`); the Response is
the step's stdout — the last line that parses as JSON, else the whole stdout. Exit 0 without a status is 200;
a non-zero exit without a status is 500 (retried) with the exit code and the tail of stderr; an OOM kill is
`oom_killed` (not retried: the same limit kills it again); a timeout kills the container and is retried;
stdout over the output limit is `output_too_large`; stdout that is not JSON is `bad_response` with a snippet.
stderr is kept with the step as its logs (the last 64 KiB).

Large Inputs: Linux limits one argument to 128 KiB. An Input larger than ARGV_LIMIT is placed in the
container as /stepflow/input.json and `argv[1]` is `@/stepflow/input.json` (also in $STEPFLOW_INPUT_FILE);
the kit's entrypoint reads either form, and a hand-written step should too (`case $1 in @*) …`).

Containers run with networking off unless the step opts in (`"network": true`), and are always removed:
after the attempt, on timeout, on cancellation and when the engine shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from stepflow import codec
from stepflow.errors import DockerError, DockerUnavailable, MalformedResponse, StepAttemptError
from stepflow.protocol.answers import Delivery, read_limit
from stepflow.protocol.contract import snippet
from stepflow.runtimes.base import Invocation
from stepflow.runtimes.docker_api import DockerClient

log = logging.getLogger("stepflow.runtimes.docker")

ARGV_LIMIT = 120 * 1024
INPUT_FILE = "/stepflow/input.json"
STDERR_KEEP = 64 * 1024
DEFAULT_PIDS = 256
OWNER_LABEL = "stepflow.owner"


def parse_memory(value: str | int) -> int:
    """'512m', '1g', '256k' or a number of bytes."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().removesuffix("b")
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def parse_stdout(raw: bytes) -> Any:
    """The last line that parses as JSON, else the whole stdout; raises MalformedResponse otherwise."""
    for line in reversed(raw.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            return codec.loads(line)
        except codec.JSONDecodeError:
            continue
    try:
        return codec.loads(raw)
    except codec.JSONDecodeError as exc:
        raise MalformedResponse(f"stdout is not JSON; it began with {snippet(raw)!r}") from exc


class DockerRuntime:
    type = "docker"

    def __init__(self, host: str | None = None) -> None:
        self._client = DockerClient(host)
        self._live: set[str] = set()
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    async def start(self) -> None:
        try:
            await self._remove_orphans()
        except (DockerUnavailable, DockerError) as exc:
            log.info("docker engine not reachable at start (%s); steps will retry until it is", exc)

    async def close(self) -> None:
        for container_id in list(self._live):
            await self._remove(container_id)
        await self._client.close()

    async def _remove_orphans(self) -> None:
        """Containers left by a stepflow process of this host that died without cleaning up."""
        host = socket.gethostname()
        for container in await self._client.list_containers(OWNER_LABEL):
            owner = (container.get("Labels") or {}).get(OWNER_LABEL, "")
            owner_host, _, pid = owner.rpartition(":")
            if owner_host == host and pid.isascii() and pid.isdigit() and not _alive(int(pid)):
                await self._client.remove(container["Id"])

    async def _remove(self, container_id: str) -> None:
        try:
            await self._client.remove(container_id)
        except (DockerUnavailable, DockerError) as exc:
            log.warning("could not remove container %s: %s", container_id[:12], exc)
        self._live.discard(container_id)

    def _config(self, invocation: Invocation, argument: str) -> dict[str, Any]:
        opts = invocation.options
        env = [f"{k}={v}" for k, v in (opts.get("env") or {}).items()]
        if invocation.ctx.traceparent:
            env.append(f"TRACEPARENT={invocation.ctx.traceparent}")  # OpenTelemetry SDKs read it
        if argument.startswith("@"):
            env.append(f"STEPFLOW_INPUT_FILE={INPUT_FILE}")
        network = bool(opts.get("network"))
        host_config: dict[str, Any] = {
            "NetworkMode": "bridge" if network else "none",
            "PidsLimit": int(opts.get("pids", DEFAULT_PIDS)),
            "LogConfig": {"Type": "json-file", "Config": {}},  # logs are read back after the exit
        }
        if opts.get("memory"):
            host_config["Memory"] = parse_memory(opts["memory"])
            host_config["MemorySwap"] = host_config["Memory"]  # no swap: the limit is the limit
        if opts.get("cpus"):
            host_config["NanoCpus"] = int(float(opts["cpus"]) * 1e9)
        config: dict[str, Any] = {
            "Image": opts["image"],
            "Cmd": [*(opts.get("command") or []), argument],
            "Env": env,
            "NetworkDisabled": not network,
            "HostConfig": host_config,
            "Labels": {OWNER_LABEL: self._owner, "stepflow.run_id": invocation.ctx.run_id,
                       "stepflow.step_id": invocation.ctx.step_id},
        }
        if opts.get("entrypoint"):
            config["Entrypoint"] = opts["entrypoint"]
        if opts.get("workdir"):
            config["WorkingDir"] = opts["workdir"]
        if opts.get("user"):
            config["User"] = opts["user"]
        return config

    async def invoke(self, invocation: Invocation) -> Delivery:
        image = invocation.options["image"]
        big = len(invocation.input) > ARGV_LIMIT
        argument = f"@{INPUT_FILE}" if big else invocation.input.decode()
        config = self._config(invocation, argument)
        try:
            container_id = await self._create(config, image)
        except DockerUnavailable as exc:
            raise StepAttemptError("docker_unavailable", str(exc)) from exc
        self._live.add(container_id)
        try:
            return await asyncio.shield(self._run(container_id, invocation, big))
        except asyncio.CancelledError:
            raise
        except DockerUnavailable as exc:
            raise StepAttemptError("docker_unavailable", str(exc)) from exc
        except DockerError as exc:
            raise StepAttemptError("docker_error", str(exc)) from exc
        finally:
            # always, also when the attempt is cancelled (engine shutdown) or times out
            await asyncio.shield(self._remove(container_id))

    async def _create(self, config: dict[str, Any], image: str) -> str:
        try:
            return await self._client.create(config)
        except DockerError as exc:
            if exc.status != 404:
                raise StepAttemptError("docker_error", f"cannot create a container of {image}: {exc.message}",
                                       retryable=exc.status >= 500) from exc
        try:
            await self._client.pull(image)
        except DockerError as exc:
            raise StepAttemptError("image_not_found", f"image {image!r} is not on the Docker engine and pulling it "
                                   f"failed: {exc.message}", retryable=False) from exc
        return await self._client.create(config)

    async def _run(self, container_id: str, invocation: Invocation, big: bool) -> Delivery:
        client = self._client
        if big:
            await client.put_file(container_id, INPUT_FILE, invocation.input)
        await client.start(container_id)
        timed_out = False
        try:
            exit_code = await asyncio.wait_for(client.wait(container_id, None), invocation.timeout)
        except TimeoutError:
            timed_out = True
            await client.kill(container_id)
            exit_code = -1
        # an OOM kill shows as exit code 137 (SIGKILL); only then is the inspect round trip worth paying
        oom = exit_code == 137 and bool(((await client.inspect(container_id)).get("State") or {}).get("OOMKilled"))
        limit = read_limit(sdk_call=invocation.sdk_call, max_output_bytes=invocation.max_output_bytes)
        stdout, stdout_size, stderr = await client.logs(container_id, limit, STDERR_KEEP)
        logs = stderr.decode(errors="replace") or None
        tail = (logs or "")[-2000:]
        if timed_out:
            raise StepAttemptError("timeout", f"the container did not exit within {invocation.timeout:g}s; it was "
                                   "killed", logs=logs)
        if oom:
            raise StepAttemptError("oom_killed", f"the container was killed for exceeding its memory limit "
                                   f"({invocation.options.get('memory')}); raise `memory` or use less",
                                   retryable=False, logs=logs, details={"exit_code": exit_code})
        details = {"exit_code": exit_code} if exit_code != 0 else {}
        if stdout_size > limit:
            return Delivery(size=stdout_size, logs=logs, details=details)  # refused unread: too large
        if not stdout.strip():
            document: Any = None
            if exit_code != 0:
                document = {"error": f"the container exited with code {exit_code}", "exit_code": exit_code,
                            "stderr": tail}
            return Delivery(document=document, size=stdout_size, logs=logs, details=details,
                            default_status=200 if exit_code == 0 else 500)
        try:
            document = parse_stdout(stdout)
        except MalformedResponse as exc:
            raise StepAttemptError("bad_response", f"{exc} (exit code {exit_code})", logs=logs,
                                   details={"exit_code": exit_code}) from exc
        if exit_code != 0 and isinstance(document, dict) and "status" not in document:
            document.setdefault("exit_code", exit_code)
        return Delivery(document=document, size=stdout_size, logs=logs, details=details,
                        default_status=200 if exit_code == 0 else 500)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
