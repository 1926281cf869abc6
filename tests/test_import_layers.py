"""The import layers (issue 12, item 4): the SDK and the durable endpoints sit beside the engine, not on it.

- `import stepflow`, `import stepflow.sdk`, `import stepflow.endpoints` (and its adapters) load no module of
  the engine, the store, the server or the runtimes: an SDK app or an API with durable endpoints does not pay
  for them. Checked in fresh interpreters, by what lands in `sys.modules`.
- No module under `stepflow/sdk/`, `stepflow/endpoints/` or `stepflow/protocol/` imports those layers, not even
  inside a function: checked statically (ast), so a lazy import cannot hide one.
- `stepflow`'s public names, loaded on first use (PEP 562), are the same objects as before, and `stepflow.X`
  still reaches any submodule.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import stepflow

PACKAGE_DIR = Path(stepflow.__file__).parent
# the layers an SDK app or a durable endpoint must not load (the engine's side of the protocol)
ENGINE_SIDE = ("stepflow.engine", "stepflow.store", "stepflow.server", "stepflow.runtimes", "stepflow.embedded",
               "stepflow.testing", "stepflow.cli")
# the public entry points that stay on the SDK's side
LIGHT_ENTRY_POINTS = [
    "stepflow",
    "stepflow.errors",
    "stepflow.protocol",
    "stepflow.client",
    "stepflow.sdk",
    "stepflow.sdk.serve_aiohttp",
    "stepflow.sdk.serve_asgi",
    "stepflow.endpoints",
    "stepflow.endpoints.core",
    "stepflow.endpoints.checkpointer",
    "stepflow.endpoints.aiohttp_middleware",
    "stepflow.endpoints.asgi",
]
# package (directory under stepflow/) -> the modules its code must never import
LAYER_RULES: dict[str, tuple[str, ...]] = {
    "sdk": ENGINE_SIDE + ("stepflow.endpoints",),
    "endpoints": ENGINE_SIDE,
    "protocol": ENGINE_SIDE + ("stepflow.sdk", "stepflow.endpoints"),
}


def _loaded_after(code: str) -> list[str]:
    """The stepflow modules in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('stepflow'))))"
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60,
                          cwd=PACKAGE_DIR.parent)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def _in_layer(module: str, layers: tuple[str, ...]) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


@pytest.mark.parametrize("entry_point", LIGHT_ENTRY_POINTS)
def test_entry_point_loads_no_engine_store_server_or_runtime(entry_point: str) -> None:
    loaded = _loaded_after(f"import {entry_point}")
    assert entry_point in loaded
    heavy = [m for m in loaded if _in_layer(m, ENGINE_SIDE)]
    assert not heavy, f"`import {entry_point}` loads the engine's side: {heavy}"


def test_import_stepflow_alone_loads_only_the_error_tree() -> None:
    assert _loaded_after("import stepflow") == ["stepflow", "stepflow.errors"]


def test_public_names_load_on_first_use() -> None:
    loaded = _loaded_after("import stepflow\nstepflow.App\nassert 'stepflow.engine' not in __import__('sys').modules"
                           "\nstepflow.Engine")
    assert "stepflow.sdk" in loaded and "stepflow.embedded" in loaded and "stepflow.engine" in loaded


def test_public_names_and_submodules_stay_reachable() -> None:
    import importlib

    import stepflow.client
    import stepflow.definitions
    import stepflow.embedded
    import stepflow.engine
    import stepflow.errors
    import stepflow.sdk

    homes = [stepflow.client, stepflow.definitions, stepflow.embedded, stepflow.engine, stepflow.errors,
             stepflow.sdk]
    for name in stepflow.__all__:
        value = getattr(stepflow, name)
        assert any(getattr(home, name, None) is value for home in homes), name
        assert name in dir(stepflow)
    for submodule in ("codec", "server", "store", "runtimes", "testing", "protocol", "endpoints"):
        assert getattr(stepflow, submodule) is importlib.import_module(f"stepflow.{submodule}")
    assert not hasattr(stepflow, "no_such_name")
    assert stepflow.__version__


def _imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """Every module an ast imports, wherever the import is (top level, function, TYPE_CHECKING block), with
    `from stepflow import X` resolved through the lazy names and relative imports resolved against `package`;
    `importlib.import_module("…")` with a literal counts too."""
    lazy: dict[str, str] = getattr(stepflow, "_LAZY", {})
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            for alias in node.names:
                found.append((node.lineno, f"{base}.{alias.name}"))
                if base == "stepflow" and alias.name in lazy:
                    found.append((node.lineno, lazy[alias.name]))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


@pytest.mark.parametrize("layer", sorted(LAYER_RULES))
def test_layer_imports_nothing_of_the_layers_above(layer: str) -> None:
    forbidden = LAYER_RULES[layer]
    files = sorted((PACKAGE_DIR / layer).rglob("*.py"))
    assert files
    offenders = []
    for path in files:
        package = f"stepflow.{layer}"
        for line, module in _imported_modules(ast.parse(path.read_text(), filename=str(path)), package):
            if _in_layer(module, forbidden):
                offenders.append(f"stepflow/{path.relative_to(PACKAGE_DIR).as_posix()}:{line} imports {module}")
    assert not offenders, f"stepflow/{layer}/ must not import {', '.join(forbidden)}:\n" + "\n".join(offenders)


def test_the_ast_check_sees_every_kind_of_import() -> None:
    code = ("import stepflow.engine\n"
            "def f():\n    from stepflow.server.app import x\n"
            "from stepflow import Engine\n"
            "from ..store import records\n"
            "importlib.import_module('stepflow.runtimes.http')\n")
    modules = [m for _, m in _imported_modules(ast.parse(code), "stepflow.endpoints")]
    for expected in ("stepflow.engine", "stepflow.server.app", "stepflow.embedded", "stepflow.store.records",
                     "stepflow.runtimes.http"):
        assert expected in modules, expected


def test_the_core_engine_keeps_its_old_name_with_a_warning() -> None:
    """`stepflow.engine.Engine` became `EngineCore` (so that `stepflow.Engine`, the embedded engine, is the one
    Engine); code written against the old name still runs, and is told."""
    import stepflow.engine

    with pytest.warns(DeprecationWarning, match="EngineCore"):
        old = stepflow.engine.Engine
    assert old is stepflow.engine.EngineCore
