"""A small Docker Engine API client over aiohttp: the calls the docker runtime needs, nothing more.

Connects to the unix socket (`/var/run/docker.sock`, or `DOCKER_HOST=unix://…`) or to `DOCKER_HOST=tcp://…`.
Registry credentials for pulls come from the usual Docker config (`$DOCKER_CONFIG/config.json` or
`~/.docker/config.json`, `auths` entries).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from stepflow import codec
from stepflow.errors import ConfigError, DockerError, DockerUnavailable

DEFAULT_SOCKET = "/var/run/docker.sock"
API_VERSION = "1.41"  # Docker 20.10+; newer engines serve it too


class DockerClient:
    def __init__(self, host: str | None = None) -> None:
        host = host or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
        self.host = host
        self._connector_factory: Callable[[], aiohttp.BaseConnector]
        if host.startswith("unix://"):
            self._connector_factory = lambda: aiohttp.UnixConnector(path=host[len("unix://"):], limit=64)
            self._base = f"http://docker/v{API_VERSION}"
        elif host.startswith(("tcp://", "http://")):
            self._connector_factory = lambda: aiohttp.TCPConnector(limit=64)
            self._base = "http://" + host.split("://", 1)[1].rstrip("/") + f"/v{API_VERSION}"
        else:
            raise ConfigError(f"unsupported DOCKER_HOST {host!r}: use unix:///path or tcp://host:port")
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=self._connector_factory())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                       data: bytes | None = None, headers: dict[str, str] | None = None,
                       timeout: float | None = 60.0) -> tuple[int, bytes]:
        hdrs = dict(headers or {})
        if body is not None:
            data = codec.dumps(body)
            hdrs["Content-Type"] = "application/json"
        try:
            async with self._http().request(method, self._base + path, params=params, data=data, headers=hdrs,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, FileNotFoundError,
                ConnectionRefusedError) as exc:
            raise DockerUnavailable(f"cannot reach the Docker engine at {self.host}: {exc}") from exc

    @staticmethod
    def _message(raw: bytes) -> str:
        try:
            return str(json.loads(raw).get("message", raw[:300].decode(errors="replace")))
        except (ValueError, AttributeError):
            return raw[:300].decode(errors="replace")

    async def _call(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 204), **kw: Any) -> bytes:
        status, raw = await self._request(method, path, **kw)
        if status not in ok:
            raise DockerError(status, self._message(raw))
        return raw

    # --- the API ------------------------------------------------------------------------------------------

    async def version(self) -> dict[str, Any]:
        return json.loads(await self._call("GET", "/version", timeout=10))  # type: ignore[no-any-return]

    async def create(self, config: dict[str, Any], name: str | None = None) -> str:
        params = {"name": name} if name else None
        return str(json.loads(await self._call("POST", "/containers/create", params=params, body=config))["Id"])

    async def put_file(self, container_id: str, path: str, content: bytes) -> None:
        """Place one file in a created container (before it starts)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name=path.lstrip("/"))
            info.size = len(content)
            info.mode = 0o444
            tar.addfile(info, io.BytesIO(content))
        await self._call("PUT", f"/containers/{container_id}/archive", params={"path": "/"},
                         data=buffer.getvalue(), headers={"Content-Type": "application/x-tar"})

    async def start(self, container_id: str) -> None:
        await self._call("POST", f"/containers/{container_id}/start", ok=(204, 304))

    async def wait(self, container_id: str, timeout: float | None) -> int:
        raw = await self._call("POST", f"/containers/{container_id}/wait", timeout=timeout)
        return int(json.loads(raw).get("StatusCode", -1))

    async def inspect(self, container_id: str) -> dict[str, Any]:
        return json.loads(await self._call("GET", f"/containers/{container_id}/json"))  # type: ignore[no-any-return]

    async def kill(self, container_id: str) -> None:
        await self._call("POST", f"/containers/{container_id}/kill", ok=(204, 404, 409))

    async def remove(self, container_id: str) -> None:
        await self._call("DELETE", f"/containers/{container_id}", params={"force": "1", "v": "1"},
                         ok=(204, 404, 409))

    async def list_containers(self, label: str) -> list[dict[str, Any]]:
        filters = codec.dumps({"label": [label]}).decode()
        raw = await self._call("GET", "/containers/json", params={"all": "1", "filters": filters})
        return json.loads(raw)  # type: ignore[no-any-return]

    async def logs(self, container_id: str, stdout_limit: int, stderr_limit: int) -> tuple[bytes, int, bytes]:
        """(stdout up to stdout_limit+1 bytes, total stdout size, the last stderr_limit bytes of stderr)."""
        url = self._base + f"/containers/{container_id}/logs"
        stdout, stderr = bytearray(), bytearray()
        total_out = 0
        try:
            async with self._http().get(url, params={"stdout": "1", "stderr": "1"},
                                        timeout=aiohttp.ClientTimeout(total=120)) as resp:
                if resp.status != 200:
                    raise DockerError(resp.status, self._message(await resp.read()))
                reader = resp.content
                while True:
                    try:
                        header = await reader.readexactly(8)
                    except Exception:  # noqa: BLE001 - end of stream
                        break
                    stream, size = header[0], struct.unpack(">I", header[4:])[0]
                    chunk = await reader.readexactly(size)
                    if stream == 1:
                        total_out += size
                        if len(stdout) <= stdout_limit:
                            stdout += chunk[: stdout_limit + 1 - len(stdout)]
                    elif stream == 2:
                        stderr += chunk
                        if len(stderr) > 2 * stderr_limit:
                            del stderr[: len(stderr) - stderr_limit]
        except (aiohttp.ClientConnectorError, FileNotFoundError) as exc:
            raise DockerUnavailable(str(exc)) from exc
        return bytes(stdout), total_out, bytes(stderr[-stderr_limit:])

    async def image_exists(self, image: str) -> bool:
        status, _ = await self._request("GET", f"/images/{quote(image, safe='')}/json")
        return status == 200

    async def pull(self, image: str, timeout: float = 600.0) -> None:
        name, tag = split_image(image)
        headers = {}
        auth = registry_auth(name)
        if auth:
            headers["X-Registry-Auth"] = auth
        raw = await self._call("POST", "/images/create", params={"fromImage": name, "tag": tag},
                               headers=headers, timeout=timeout)
        # the pull streams JSON progress lines; an error arrives as {"error": …} with status 200
        for line in raw.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("error"):
                raise DockerError(404, str(item["error"]))


def split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, tag
    return image, "latest"


def registry_auth(image_name: str) -> str | None:
    """X-Registry-Auth for the image's registry from the Docker config file, or None."""
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    first = image_name.split("/", 1)[0]
    registry = first if ("." in first or ":" in first or first == "localhost") and "/" in image_name \
        else "https://index.docker.io/v1/"
    for key, entry in (config.get("auths") or {}).items():
        if key.rstrip("/").removeprefix("https://").removeprefix("http://") != \
                registry.rstrip("/").removeprefix("https://").removeprefix("http://"):
            continue
        auth: dict[str, str] = {"serveraddress": key}
        if entry.get("identitytoken"):
            auth["identitytoken"] = entry["identitytoken"]
        elif entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            auth.update(username=user, password=password)
        else:
            continue
        return base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()
    return None
