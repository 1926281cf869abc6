"""Collecting what a packaged step needs: the user's code, stepflow, and stepflow's runtime dependencies,
copied from the current environment (so a build needs no network and installs exactly what was tested)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from importlib import metadata
from pathlib import Path

import stepflow
from stepflow.errors import TargetError

_SKIP_DISTS = {"stepflow", "pip", "setuptools", "wheel"}


def requirement_tree(root: str = "stepflow") -> list[metadata.Distribution]:
    """The installed distributions `root` needs at run time (extras excluded), `root` itself excluded."""
    seen: dict[str, metadata.Distribution] = {}

    def visit(name: str) -> None:
        key = name.lower().replace("_", "-")
        if key in seen:
            return
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return  # a marker-excluded requirement (e.g. for another Python or OS)
        seen[key] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            visit(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0])

    visit(root)
    return [d for k, d in seen.items() if k not in _SKIP_DISTS]


def copy_dependencies(dest: Path) -> None:
    """stepflow and its dependencies into `dest` (a directory put on PYTHONPATH)."""
    dest.mkdir(parents=True, exist_ok=True)
    package_dir = Path(stepflow.__file__).parent
    shutil.copytree(package_dir, dest / "stepflow", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    for dist in requirement_tree():
        for file in dist.files or []:
            parts = Path(str(file)).parts
            if not parts or parts[0] in ("..", "bin") or "__pycache__" in parts:
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                target = dest / Path(str(file))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


def copy_user_code(target: str, dest: Path) -> str:
    """Copy the module (file, or its top-level package) of `target` into `dest`; returns the target as it
    is importable there."""
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise TargetError(f"target {target!r} must be 'path/to/file.py:attribute' or 'package.module:attribute'")
    dest.mkdir(parents=True, exist_ok=True)
    if module_name.endswith(".py"):
        source = Path(module_name)
        if not source.is_file():
            raise TargetError(f"{source} does not exist")
        shutil.copy2(source, dest / source.name)
        return f"{source.stem}:{attr}"
    top = module_name.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise TargetError(f"cannot find module {top!r} (is it on PYTHONPATH?)")
    origin = Path(spec.origin)
    if origin.name == "__init__.py":
        shutil.copytree(origin.parent, dest / top, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    else:
        shutil.copy2(origin, dest / origin.name)
    return target
