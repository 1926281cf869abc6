"""Readable tables for people, JSON for programs."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from stepflow import codec
from stepflow.errors import ApiError, StepflowError, WaitTimeoutError


def print_json(data: Any) -> None:
    click.echo(codec.dumps(data).decode())


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """columns: (key, heading). Values are shown compactly; long ones are cut with an ellipsis."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(heading), *(len(c[i]) for c in cells)) for i, (_, heading) in enumerate(columns)]
    click.echo("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip())
    for c in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())


def show(data: Any, rows: list[dict[str, Any]], columns: list[tuple[str, str]], *, as_json: bool) -> None:
    """`data` as JSON with --json, else `rows` as a table."""
    if as_json:
        print_json(data)
    else:
        print_table(rows, columns)


def _cell(value: Any, limit: int = 60) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else codec.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Exit codes scripts can rely on (docs/operations.md): 0 ok, 1 failed (a run failed or was cancelled, or the
# server could not do it), 2 usage (bad arguments or credentials), 3 not found, 4 server unreachable, 5 timed out.
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_TIMED_OUT = 1, 2, 3, 4, 5


def fail(message: str, code: int = EXIT_FAILED, *, as_json: bool = False, error_code: str = "error") -> NoReturn:
    if as_json:  # a script that asked for JSON gets its errors as JSON too, on stdout
        click.echo(codec.dumps({"error": {"code": error_code, "message": message}}).decode())
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def fail_for(exc: StepflowError, *, as_json: bool = False) -> None:
    """Exit for an error of a client call, with the exit code of its kind and a sentence for a person."""
    if isinstance(exc, WaitTimeoutError):
        fail(exc.message, EXIT_TIMED_OUT, as_json=as_json, error_code="timed_out")
    if isinstance(exc, ApiError):
        if exc.status == 0:
            fail(exc.api_message, EXIT_UNREACHABLE, as_json=as_json, error_code="unreachable")
        code = EXIT_NOT_FOUND if exc.status == 404 else EXIT_USAGE if exc.status in (400, 401, 403, 405, 413) \
            else EXIT_FAILED
        fail(exc.message, code, as_json=as_json, error_code=exc.code)
    fail(exc.message, as_json=as_json, error_code=exc.code)
