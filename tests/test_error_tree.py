"""The one error tree (issue 12, item 3).

- Every exception class of the package derives from `StepflowError` and is defined in `stepflow/errors.py`,
  except control-flow signals that `except Exception` must not swallow: those derive from `BaseException`
  directly and their names end in `Interrupt` or `Signal`.
- No public function or method raises a builtin error (`ValueError`, `TypeError`, `RuntimeError`, …): what
  escapes at a public edge is a `StepflowError` the caller can catch as one. Private helpers (a name starting
  with `_`, or inside something that does) may use builtins among themselves.
- The retry policy is the attribute `retryable`, one spelling (the SDK protocol's wire field `opts.retriable`
  and the public class name `NonRetriableError` are Inngest's and stay).

The walk is static (ast) for raises and spellings, and imports every module for the class checks.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
from pathlib import Path

import stepflow
from stepflow import errors
from stepflow.errors import StepflowError

PACKAGE_DIR = Path(stepflow.__file__).parent
BUILTIN_ERRORS = frozenset(name for name, obj in vars(builtins).items()
                           if isinstance(obj, type) and issubclass(obj, BaseException))
SIGNAL_SUFFIXES = ("Interrupt", "Signal")

# Python's protocols name the builtin a dunder must raise, and Python itself catches exactly that builtin:
# a module's or class's `__getattr__` (PEP 562) raises AttributeError (`hasattr`, `getattr(x, n, default)` and
# `from m import n` rely on it); an iterator's `__next__` / `__anext__` end with StopIteration /
# StopAsyncIteration. A StepflowError there would break the protocol, so these are allowed wherever they are.
PROTOCOL_RAISES: dict[str, frozenset[str]] = {
    "__getattr__": frozenset({"AttributeError"}),
    "__getattribute__": frozenset({"AttributeError"}),
    "__next__": frozenset({"StopIteration"}),
    "__anext__": frozenset({"StopAsyncIteration"}),
}

# Any other public raise of a builtin error that is right, each with why: (file relative to the package, the
# enclosing function's qualified name, the builtin) -> reason. Keep it short; prefer a StepflowError.
ALLOWED_BUILTIN_RAISES: dict[tuple[str, str, str], str] = {
    # Empty. The `TypeError`s of wrong call arguments are `InvalidArgumentError`, a StepflowError that is also a
    # TypeError (what Python raises for a wrong call), so they need no entry; `NotImplementedError` in abstract
    # stubs appears only in private methods today.
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc
    if isinstance(exc, ast.Call):
        exc = exc.func
    if isinstance(exc, ast.Name):
        return exc.id
    if isinstance(exc, ast.Attribute) and isinstance(exc.value, ast.Name) and exc.value.id == "builtins":
        return exc.attr
    return None


class _RaiseFinder(ast.NodeVisitor):
    def __init__(self, rel: str, private_module: bool) -> None:
        self.rel = rel
        self.scopes: list[str] = []
        self.private_module = private_module
        self.found: list[tuple[str, int, str, str]] = []  # (file, line, qualname, builtin)

    def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scopes.append(node.name)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_Raise(self, node: ast.Raise) -> None:
        name = _raised_name(node)
        public = not self.private_module and not any(_is_private(s) for s in self.scopes)
        by_protocol = bool(self.scopes) and name in PROTOCOL_RAISES.get(self.scopes[-1], frozenset())
        if name in BUILTIN_ERRORS and public and not by_protocol:
            self.found.append((self.rel, node.lineno, ".".join(self.scopes) or "<module>", name))
        self.generic_visit(node)


def test_no_public_function_raises_a_builtin_error() -> None:
    offenders = []
    for module, path in _modules():
        rel = path.relative_to(PACKAGE_DIR).as_posix()
        finder = _RaiseFinder(rel, private_module=any(_is_private(p) for p in module.split(".")))
        finder.visit(ast.parse(path.read_text(), filename=str(path)))
        offenders += [f for f in finder.found if (f[0], f[2], f[3]) not in ALLOWED_BUILTIN_RAISES]
    assert not offenders, (
        "public functions raise builtin errors; raise a stepflow.errors class instead (ConfigError, "
        "InvalidRequestError, DefinitionError, InvalidArgumentError, …):\n"
        + "\n".join(f"  stepflow/{file}:{line} {qualname}: raise {name}" for file, line, qualname, name in offenders))


def test_every_exception_class_is_in_the_tree() -> None:
    offenders = []
    for module_name, _path in _modules():
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, BaseException)) or obj.__module__ != module_name:
                continue
            where = f"{module_name}.{obj.__qualname__}"
            if issubclass(obj, StepflowError):
                if module_name != errors.__name__:
                    offenders.append(f"{where}: define it in stepflow/errors.py, the one home of the tree")
            elif obj.__bases__ == (BaseException,) and obj.__name__.endswith(SIGNAL_SUFFIXES):
                pass  # a control-flow signal: `except Exception` must not swallow it
            else:
                bases = ", ".join(b.__name__ for b in obj.__bases__)
                offenders.append(f"{where}({bases}): derive it from StepflowError (in stepflow/errors.py), or, for "
                                 "a control-flow signal, from BaseException directly with a name ending in "
                                 "Interrupt or Signal")
    assert not offenders, "exception classes outside the one error tree:\n" + "\n".join(f"  {o}" for o in offenders)


def test_every_module_of_the_package_is_walked() -> None:
    names = {name for name, _ in _modules()}
    assert {m.name for m in pkgutil.walk_packages(stepflow.__path__, "stepflow.")} <= names
    assert {"stepflow.errors", "stepflow.protocol.answers", "stepflow.sdk.execution"} <= names


def test_retry_policy_has_one_spelling() -> None:
    offenders = []
    for _module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Attribute):
                names.append(node.attr)
            elif isinstance(node, (ast.keyword, ast.arg)) and node.arg:
                names.append(node.arg)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.append(node.name)
            elif isinstance(node, ast.ClassDef):
                names += [t.id for stmt in node.body if isinstance(stmt, (ast.Assign, ast.AnnAssign))
                          for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
                          if isinstance(t, ast.Name)]
            offenders += [f"stepflow/{path.relative_to(PACKAGE_DIR).as_posix()}:{getattr(node, 'lineno', '?')} {n}"
                          for n in names if "retriable" in n.lower()]
    assert not offenders, "spell the retry policy `retryable`:\n" + "\n".join(f"  {o}" for o in offenders)


def test_retryable_is_a_class_attribute_instances_may_override() -> None:
    assert StepflowError.retryable is True and "retryable" in vars(StepflowError)
    assert errors.NonRetriableError.retryable is False
    assert errors.StepError.retryable is False and errors.NonDeterminismError.retryable is False
    assert errors.StepAttemptError("timeout", "slow").retryable is True
    assert errors.StepAttemptError("output_too_large", "big", retryable=False).retryable is False
    assert errors.MalformedResponse("bad", retryable=False).retryable is False
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, StepflowError):
            assert isinstance(cls.retryable, bool), cls


def test_public_names_are_importable_where_they_were() -> None:
    import stepflow.protocol
    import stepflow.protocol.answers
    import stepflow.runtimes
    import stepflow.sdk

    for name in ("NonDeterminismError", "NonRetriableError", "RetryAfterError", "StepError", "StepflowError",
                 "DefinitionError", "ApiError", "RunFailedError", "WaitTimeoutError"):
        assert getattr(stepflow, name) is getattr(errors, name)
    for name in ("NonDeterminismError", "NonRetriableError", "RetryAfterError", "StepError"):
        assert getattr(stepflow.sdk, name) is getattr(errors, name)
    assert stepflow.protocol.StepAttemptError is stepflow.protocol.answers.StepAttemptError is errors.StepAttemptError
    assert stepflow.runtimes.StepAttemptError is errors.StepAttemptError
    assert stepflow.protocol.MalformedResponse is errors.MalformedResponse


def test_builtin_compatible_errors_stay_catchable_as_the_builtin() -> None:
    import pytest

    from stepflow.durations import parse_duration

    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration("soon")
    assert isinstance(info.value, errors.InvalidDurationError)
    with pytest.raises(TypeError, match="takes SDK apps") as type_info:
        stepflow.Engine(42)  # type: ignore[arg-type]
    assert isinstance(type_info.value, errors.InvalidArgumentError)
