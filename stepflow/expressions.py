"""CEL expressions, compiled once and evaluated many times.

Backed by `common-expression-language` (Rust bindings of cel-rust). Used for trigger filters (`if` over
`event`), workflow edges (`if` over `event`, `steps`, `response`) and, later, idempotency keys and matches.
"""

from __future__ import annotations

from typing import Any

from stepflow.errors import ExpressionError


class Expression:
    """A compiled CEL expression."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("expression must be a non-empty string")
        self.source = source
        import cel  # here, not at module level: it costs ~0.1 s to import, which CLI calls should not pay

        try:
            self._program = cel.compile(source)
        except (ValueError, RuntimeError) as exc:
            raise ExpressionError(f"invalid CEL expression {source!r}: {_first_line(exc)}") from exc

    def evaluate(self, activation: dict[str, Any]) -> Any:
        try:
            return self._program.execute(activation)
        except Exception as exc:  # cel raises KeyError/ValueError/TypeError/RuntimeError for evaluation errors
            raise ExpressionError(f"CEL expression {self.source!r} failed: {_describe(exc)}") from exc

    def is_true(self, activation: dict[str, Any]) -> bool:
        """Evaluate as a condition. Only a real boolean `true` counts; anything else is a clear error."""
        value = self.evaluate(activation)
        if not isinstance(value, bool):
            raise ExpressionError(f"CEL expression {self.source!r} gave {value!r}, not a boolean")
        return value

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no such key {exc.args[0]!r}" if exc.args else "no such key"
    return _first_line(exc)
