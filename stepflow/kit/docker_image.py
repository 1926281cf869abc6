"""`stepflow package docker TARGET --tag NAME`: a container image that runs a Python step or an SDK function
with the step contract (Input as argv[1], Response on stdout), built through the Docker Engine API."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import aiohttp

from stepflow.errors import DockerError
from stepflow.kit.bundle import copy_dependencies, copy_user_code
from stepflow.runtimes.docker_api import DockerClient

DEFAULT_BASE = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"

DOCKERFILE = """\
# stepflow step image: Input as argv[1] (or @file for large Inputs), Response as the last stdout line.
FROM {base}
COPY lib /opt/stepflow/lib
COPY app /opt/stepflow/app
ENV PYTHONPATH=/opt/stepflow/lib:/opt/stepflow/app \\
    PYTHONDONTWRITEBYTECODE=1 \\
    STEPFLOW_TARGET={target}
WORKDIR /opt/stepflow/app
ENTRYPOINT ["python3", "-m", "stepflow.kit.entrypoint"]
"""


def build_context(target: str, base: str, directory: Path) -> None:
    importable = copy_user_code(target, directory / "app")
    copy_dependencies(directory / "lib")
    (directory / "Dockerfile").write_text(DOCKERFILE.format(base=base, target=importable))


def _tar(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


async def build_image(target: str, tag: str, base: str = DEFAULT_BASE, host: str | None = None) -> str:
    """Build and tag the image; returns its id. The base image's Python must match this one's (the bundled
    dependencies include compiled extensions for it)."""
    with tempfile.TemporaryDirectory(prefix="stepflow-package-") as tmp:
        build_context(target, base, Path(tmp))
        context = _tar(Path(tmp))
    client = DockerClient(host)
    try:
        url = client._base + "/build"
        image_id = ""
        async with client._http().post(url, params={"t": tag, "rm": "1", "forcerm": "1"}, data=context,
                                       headers={"Content-Type": "application/x-tar"},
                                       timeout=aiohttp.ClientTimeout(total=1800)) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise DockerError(resp.status, raw.decode(errors="replace")[:500])
        for line in raw.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("error"):
                raise DockerError(500, str(item["error"]).strip())
            aux = item.get("aux") or {}
            if aux.get("ID"):
                image_id = aux["ID"]
            stream = str(item.get("stream", ""))
            if stream.startswith("Successfully built "):
                image_id = image_id or stream.split()[-1]
        return image_id
    finally:
        await client.close()
