"""Numbered SQL migrations, each an up file with its rollback: `NNNN_name.up.sql` and `NNNN_name.down.sql`.

Each migration runs in its own transaction. `schema_migrations` records version, name, checksum and
time applied. A session-level advisory lock keeps two migrators (two replicas starting at once) apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from recomamp.logs import get_logger
from recomamp.store.db import Connection

log = get_logger(__name__)

# Any constant works, as long as nothing else in the database takes the same advisory lock.
MIGRATION_LOCK_ID = 0x7265636F6D616D70 & 0x7FFFFFFFFFFFFFFF  # "recomamp"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.(?P<direction>up|down)\.sql$")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up_sql: str
    down_sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up_sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None
    changed: bool  # applied, but the file no longer matches what was applied


def default_migrations_dir() -> Path:
    # Shipped inside the package (package data), so a wheel migrates as a source checkout does.
    return Path(__file__).resolve().parents[1] / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or default_migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"the migrations folder {directory} does not exist")
    ups: dict[int, tuple[str, str]] = {}
    downs: dict[int, str] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE_NAME.match(path.name)
        if match is None:
            continue
        version = int(match["version"])
        if match["direction"] == "up":
            if version in ups:
                raise MigrationError(f"two up migrations share version {version:04d}")
            ups[version] = (match["name"], path.read_text(encoding="utf-8"))
        else:
            downs[version] = path.read_text(encoding="utf-8")
    migrations = []
    for version in sorted(ups):
        name, up_sql = ups[version]
        if version not in downs:
            raise MigrationError(f"migration {version:04d}_{name} has no rollback file {version:04d}_{name}.down.sql")
        migrations.append(Migration(version, name, up_sql, downs[version]))
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise MigrationError("migration versions must run 0001, 0002, … with no gaps")
    return migrations


async def _applied(connection: Connection) -> dict[int, asyncpg.Record]:
    await connection.execute(CREATE_TABLE)
    rows = await connection.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {row["version"]: row for row in rows}


def _check_unchanged(migrations: list[Migration], applied: dict[int, asyncpg.Record]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{row['name']}, which this release does not know: "
                "is this an older release than the one that migrated the database?"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {version:04d}_{migration.name} has changed since it was applied; "
                "refusing to go on. Restore the file as it was, and put new changes in a new migration"
            )


async def status(connection: Connection, directory: Path | None = None) -> list[MigrationState]:
    migrations = await asyncio.to_thread(load_migrations, directory)  # file reads: off the event loop
    applied = await _applied(connection)
    return [
        MigrationState(
            version=m.version,
            name=m.name,
            applied_at=applied[m.version]["applied_at"] if m.version in applied else None,
            changed=m.version in applied and applied[m.version]["checksum"] != m.checksum,
        )
        for m in migrations
    ]


async def pending_versions(connection: Connection, directory: Path | None = None) -> list[int]:
    return [state.version for state in await status(connection, directory) if state.applied_at is None]


async def migrate_up(connection: Connection, *, to: int | None = None, directory: Path | None = None) -> list[int]:
    """Apply pending migrations up to `to` (default: all). Returns the versions applied."""
    migrations = await asyncio.to_thread(load_migrations, directory)  # file reads: off the event loop
    done: list[int] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        applied = await _applied(connection)
        _check_unchanged(migrations, applied)
        for migration in migrations:
            if migration.version in applied or (to is not None and migration.version > to):
                continue
            async with connection.transaction():
                await connection.execute(migration.up_sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", version=migration.version, migration=migration.name)
            done.append(migration.version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return done


async def migrate_down(connection: Connection, *, to: int, directory: Path | None = None) -> list[int]:
    """Roll back applied migrations above `to`, newest first. Returns the versions rolled back."""
    if to < 0:
        raise MigrationError("--to must be 0 or more")
    migrations = await asyncio.to_thread(load_migrations, directory)  # file reads: off the event loop
    done: list[int] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        applied = await _applied(connection)
        _check_unchanged(migrations, applied)
        for migration in reversed(migrations):
            if migration.version not in applied or migration.version <= to:
                continue
            async with connection.transaction():
                await connection.execute(migration.down_sql)
                await connection.execute("DELETE FROM schema_migrations WHERE version = $1", migration.version)
            log.info("migration_rolled_back", version=migration.version, migration=migration.name)
            done.append(migration.version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return done
