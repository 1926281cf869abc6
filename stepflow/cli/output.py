"""Readable tables for people, JSON for programs."""

from __future__ import annotations

import sys
from typing import Any

import click

from stepflow import codec


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


def _cell(value: Any, limit: int = 60) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else codec.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
