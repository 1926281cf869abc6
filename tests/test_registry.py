"""Function registration rules and schema migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import stepflow
from stepflow.errors import DefinitionError, SchemaVersionError
from stepflow.store import SqliteStore
from stepflow.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

pytestmark = pytest.mark.runs_once  # its engines use SQLite files


async def test_a_function_id_cannot_move_silently_to_another_app(tmp_path: Path) -> None:
    first, second = stepflow.App("billing"), stepflow.App("shipping")

    @first.function(id="process", trigger=stepflow.event("billing/x"))
    async def a(ctx: stepflow.Context) -> int:
        return 1

    @second.function(id="process", trigger=stepflow.event("shipping/x"))
    async def b(ctx: stepflow.Context) -> int:
        return 2

    engine = stepflow.Engine(first, second, store=f"sqlite:///{tmp_path}/r.db")
    with pytest.raises(DefinitionError) as info:
        await engine.start()
    await engine.stop()
    await engine.core.stop()
    assert "'process'" in str(info.value) and "billing" in str(info.value)


async def test_an_old_database_is_migrated_forward(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in MIGRATIONS[0].split(";"):
        code = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--")).strip()
        if code:
            db.execute(code)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(runs)")}
        assert "start_deadline" in columns
        assert store.db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    finally:
        await store.close()


async def test_a_newer_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = SqliteStore(path)
    await store.open()
    store.db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    await store.close()
    with pytest.raises(SchemaVersionError) as info:
        await SqliteStore(path).open()
    assert "999" in str(info.value) and "upgrade stepflow" in str(info.value)
