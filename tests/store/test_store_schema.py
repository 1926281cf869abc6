"""The two dialects' schemas describe the same tables, columns, indexes and primary keys.

The schema is kept as versioned SQL per dialect (stepflow/store/sqlite_schema.py, postgres_schema.py): SQL
types and a few clauses differ, so each is written in its own dialect; this test is what keeps them the same
database. It reads both from live databases, as migrated, not from the text.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, make_store

pytestmark = [pytest.mark.runs_once,  # compares both stores
              pytest.mark.skipif(not POSTGRES_URL, reason="needs STEPFLOW_TEST_POSTGRES_URL (./scripts/test sets it)")]


def sqlite_shape(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE "
                                             "'sqlite_%'")]
        shape: dict[str, Any] = {}
        for table in tables:
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            indexes = {r[1] for r in conn.execute(f"PRAGMA index_list({table})") if not r[1].startswith("sqlite_")}
            shape[table] = {"columns": sorted(r[1] for r in info),
                            "primary_key": [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]],
                            "indexes": sorted(indexes)}
        return shape
    finally:
        conn.close()


async def postgres_shape(store: Any) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL.split("?")[0])  # type: ignore[union-attr]
    try:
        rows = await conn.fetch("SELECT table_name, column_name FROM information_schema.columns WHERE "
                                "table_schema=$1", store.schema)
        indexes = await conn.fetch("SELECT tablename, indexname FROM pg_indexes WHERE schemaname=$1 AND indexname "
                                   "NOT LIKE '%_pkey'", store.schema)
        keys = await conn.fetch(
            "SELECT tc.table_name, kcu.column_name, kcu.ordinal_position FROM information_schema.table_constraints tc "
            "JOIN information_schema.key_column_usage kcu ON kcu.constraint_name=tc.constraint_name AND "
            "kcu.table_schema=tc.table_schema WHERE tc.constraint_type='PRIMARY KEY' AND tc.table_schema=$1",
            store.schema)
    finally:
        await conn.close()
    shape: dict[str, Any] = {}
    for table, column in rows:
        shape.setdefault(table, {"columns": [], "primary_key": [], "indexes": []})["columns"].append(column)
    for table, index in indexes:
        shape[table]["indexes"].append(index)
    for table, column, _position in sorted(keys, key=lambda r: (r[0], r[2])):
        shape[table]["primary_key"].append(column)
    for table in shape.values():
        table["columns"].sort()
        table["indexes"].sort()
    return shape


async def test_both_dialects_describe_the_same_database(tmp_path: Path) -> None:
    lite = await make_store(tmp_path, "shape", "sqlite")
    await lite.open()
    await lite.close()
    pg = await make_store(tmp_path, "shape", "postgres")
    await pg.open()
    try:
        got_pg = await postgres_shape(pg)
    finally:
        await pg.close()
    got_lite = sqlite_shape(tmp_path / "shape.db")
    # bookkeeping tables of each dialect's migrations are not part of the data model
    for shape in (got_pg, got_lite):
        for meta in ("schema_version", "schema_migrations", "meta"):
            shape.pop(meta, None)
    assert {"functions", "events", "runs", "steps", "jobs", "pauses", "idempotency", "cron_ticks"} <= set(got_lite)
    assert sorted(got_lite) == sorted(got_pg)
    assert got_lite["jobs"]["indexes"] == ["jobs_due", "jobs_owner", "jobs_run", "jobs_slot1", "jobs_slot2",
                                           "jobs_waiting"]
    for table in got_lite:
        assert got_lite[table] == got_pg[table], table
