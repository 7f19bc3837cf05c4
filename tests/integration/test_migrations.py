from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from recomamp.store import migrations

SCHEMA_QUERY = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
ORDER BY table_name, column_name
"""
INDEX_QUERY = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY indexname
"""
CONSTRAINT_QUERY = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'schema_migrations' ORDER BY conname
"""


async def _schema(connection: asyncpg.Connection) -> tuple[list[tuple[object, ...]], ...]:
    results = []
    for query in (SCHEMA_QUERY, INDEX_QUERY, CONSTRAINT_QUERY):
        results.append([tuple(row) for row in await connection.fetch(query)])
    return tuple(results)


async def test_up_down_up_gives_the_same_schema(empty_db_dsn: str) -> None:
    versions = [m.version for m in migrations.load_migrations()]
    connection = await asyncpg.connect(empty_db_dsn)
    try:
        assert await migrations.migrate_up(connection) == versions
        first = await _schema(connection)
        assert len(first[0]) > 50

        assert await migrations.migrate_down(connection, to=0) == versions[::-1]
        assert (await _schema(connection))[0] == []

        assert await migrations.migrate_up(connection) == versions
        assert await _schema(connection) == first
        assert await migrations.migrate_up(connection) == []
    finally:
        await connection.close()


async def test_each_rollback_restores_the_schema_before_it(empty_db_dsn: str) -> None:
    """Down one version at a time: each schema equals the one that version's up migration started from."""
    versions = [m.version for m in migrations.load_migrations()]
    connection = await asyncpg.connect(empty_db_dsn)
    try:
        before: dict[int, tuple[list[tuple[object, ...]], ...]] = {}
        for version in versions:
            before[version] = await _schema(connection)
            await migrations.migrate_up(connection, to=version)
        for version in reversed(versions):
            await migrations.migrate_down(connection, to=version - 1)
            assert await _schema(connection) == before[version], f"rolling back {version} left a different schema"
    finally:
        await connection.close()


async def test_snowflake_columns_on_schedules(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'workflow_schedules' AND column_name IN "
        "('snowflake_enabled','snowflake_table_name','snowflake_schema_name') ORDER BY column_name"
    )
    assert [tuple(row) for row in rows] == [
        ("snowflake_enabled", "boolean", "YES"),
        ("snowflake_schema_name", "text", "YES"),
        ("snowflake_table_name", "text", "YES"),
    ]
    index = await db.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'workflow_schedules_snowflake_enabled'"
    )
    assert "WHERE snowflake_enabled" in index


async def test_down_to_one_removes_only_the_snowflake_columns(empty_db_dsn: str) -> None:
    connection = await asyncpg.connect(empty_db_dsn)
    try:
        await migrations.migrate_up(connection)
        assert await migrations.migrate_down(connection, to=1) == list(range(len(migrations.load_migrations()), 1, -1))
        columns = {
            row["column_name"]
            for row in await connection.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'workflow_schedules'"
            )
        }
        assert "name" in columns
        assert not any(column.startswith("snowflake_") for column in columns)
        states = await migrations.status(connection)
        assert [(s.version, s.applied_at is not None) for s in states][:2] == [(1, True), (2, False)]
        assert not any(s.applied_at for s in states[1:])
    finally:
        await connection.close()


async def test_a_changed_applied_migration_is_refused(empty_db_dsn: str, tmp_path: Path) -> None:
    for source in migrations.default_migrations_dir().iterdir():
        (tmp_path / source.name).write_text(source.read_text())
    connection = await asyncpg.connect(empty_db_dsn)
    try:
        await migrations.migrate_up(connection, directory=tmp_path)
        edited = tmp_path / "0001_initial.up.sql"
        edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(migrations.MigrationError, match="0001_initial has changed since it was applied"):
            await migrations.migrate_up(connection, directory=tmp_path)
        states = await migrations.status(connection, directory=tmp_path)
        assert [s.changed for s in states] == [True] + [False] * (len(states) - 1)
    finally:
        await connection.close()


async def test_a_migration_without_rollback_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_first.up.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="no rollback file"):
        migrations.load_migrations(tmp_path)


async def test_a_failing_migration_leaves_nothing_behind(empty_db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_good.up.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "0001_good.down.sql").write_text("DROP TABLE good;")
    (tmp_path / "0002_bad.up.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    (tmp_path / "0002_bad.down.sql").write_text("DROP TABLE half;")
    connection = await asyncpg.connect(empty_db_dsn)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrations.migrate_up(connection, directory=tmp_path)
        assert await connection.fetchval("SELECT to_regclass('half')") is None
        assert await connection.fetchval("SELECT to_regclass('good')") == "good"
        assert await connection.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
    finally:
        await connection.close()


async def test_two_migrators_racing_apply_each_migration_once(empty_db_dsn: str) -> None:
    connections = [await asyncpg.connect(empty_db_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.migrate_up(c) for c in connections))
        assert sorted(v for result in results for v in result) == [m.version for m in migrations.load_migrations()]
        assert await connections[0].fetchval("SELECT count(*) FROM schema_migrations") == len(
            migrations.load_migrations()
        )
    finally:
        for connection in connections:
            await connection.close()
