"""The functions a local Lambda serves: one per zip file or directory in DIR."""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from stepflow.errors import TargetError

MANIFEST = "stepflow-lambda.json"
DEFAULT_HANDLER = "lambda_function.handler"


@dataclass(slots=True)
class LocalFunction:
    name: str
    code_dir: Path
    handler: str = DEFAULT_HANDLER
    timeout: float = 30.0
    memory: int = 128
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:000000000000:function:{self.name}"


def _load_manifest(name: str, code_dir: Path) -> LocalFunction:
    fn = LocalFunction(name=name, code_dir=code_dir)
    manifest = code_dir / MANIFEST
    if manifest.exists():
        config = json.loads(manifest.read_text())
        fn.handler = config.get("handler", fn.handler)
        fn.timeout = float(config.get("timeout", fn.timeout))
        fn.memory = int(config.get("memory", fn.memory))
        fn.environment = {str(k): str(v) for k, v in (config.get("environment") or {}).items()}
    return fn


def discover_functions(directory: Path, unpack_to: Path | None = None) -> dict[str, LocalFunction]:
    """`DIR/<name>.zip` (unpacked into a temporary directory) and `DIR/<name>/` become functions `<name>`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TargetError(f"{directory} is not a directory of Lambda functions")
    unpack_root = unpack_to or Path(tempfile.mkdtemp(prefix="stepflow-lambda-"))
    found: dict[str, LocalFunction] = {}
    for entry in sorted(directory.iterdir()):
        if entry.suffix == ".zip" and entry.is_file():
            target = unpack_root / entry.stem
            with zipfile.ZipFile(entry) as archive:
                archive.extractall(target)
            found[entry.stem] = _load_manifest(entry.stem, target)
        elif entry.is_dir() and not entry.name.startswith((".", "_")):
            found[entry.name] = _load_manifest(entry.name, entry.resolve())
    return found
