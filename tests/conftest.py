"""Shared fixtures. Every test that touches the database gets a real Postgres and a database of its own.

The server is `RECOMAMP_TEST_DSN` when set, else a throwaway one started here from the pgserver wheel.
A migrated template database is built once per session; each test gets a fresh copy of it
(CREATE DATABASE … TEMPLATE takes tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog
from cryptography.fernet import Fernet

from recomamp.sandbox.embedded import start_postgres, with_database
from recomamp.store import migrations
from recomamp.store.db import init_connection
from recomamp.testing import loop_holds

TEMPLATE_DB = f"recomamp_template_{os.getpid()}"
# Blocking I/O or a CPU-bound step on the loop shows up as hundreds of milliseconds; below this, asyncio's
# debug-mode overhead and a virtual machine's steal time alone made ordinary steps flaky (110–150 ms seen).
SLOW_CALLBACK_SECONDS = 0.25


@pytest.fixture
async def _no_slow_callbacks() -> AsyncIterator[None]:
    """No callback of recomamp's holds the event loop for more than SLOW_CALLBACK_SECONDS on any path a test exercises.

    Timed by `loop_holds`, which takes out the time the loop's thread waited for a CPU (asyncio's own check counts
    it, and failed beside a CPU hog); debug mode stays on for its other checks. Only callbacks of recomamp's own
    code count: a test's coroutine, or the in-process simulator's request handlers, may block in ways production
    never does."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)  # for its checks: a call_soon from another thread raises, a coroutine's origin is kept
    loop.slow_callback_duration = 3600.0  # loop_holds times them instead
    # ...but not for the traceback it takes of every Future and Task made (they ask loop.get_debug()): CPU on the
    # loop's thread that production never spends, and beside a CPU hog one step's share of it passed 0.25 s.
    loop.get_debug = lambda: False  # type: ignore[method-assign]
    try:
        with loop_holds(loop, SLOW_CALLBACK_SECONDS) as holds:
            yield
    finally:
        del loop.get_debug
        loop.set_debug(False)
    ours = [
        str(h)
        for h in holds
        if "/recomamp/" in h.callback and "/tests/" not in h.callback and "/sandbox/" not in h.callback
    ]
    assert not ours, f"callbacks held the event loop for more than {SLOW_CALLBACK_SECONDS} s:\n" + "\n".join(ours)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "_no_slow_callbacks")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that configures logging binds a handler to its captured stream: undo that afterwards."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


async def _admin_execute(admin_dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    dsn = os.environ.get("RECOMAMP_TEST_DSN")
    if dsn:
        return dsn
    # Not under pytest's basetemp: as root, pgserver runs Postgres as the user `pgserver`, which must traverse
    # the data directory's parents, and every pytest session that starts resets /tmp/pytest-of-root to 0700
    # (seen: a second `pytest` beside `make test` made this server PANIC on pg_control, then every test err).
    data = Path(tempfile.mkdtemp(prefix="recomamp-test-pg-"))
    # Registered before pgserver's own exit hook, so it runs after that hook has stopped the server.
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    return start_postgres(data / "pgdata")


@pytest.fixture(scope="session")
def template_dsn(pg_admin_dsn: str) -> Iterator[str]:
    async def build() -> None:
        await _admin_execute(
            pg_admin_dsn, f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"', f'CREATE DATABASE "{TEMPLATE_DB}"'
        )
        connection = await asyncpg.connect(with_database(pg_admin_dsn, TEMPLATE_DB))
        try:
            await migrations.migrate_up(connection)
        finally:
            await connection.close()

    asyncio.run(build())
    yield with_database(pg_admin_dsn, TEMPLATE_DB)
    asyncio.run(_admin_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"'))


async def _fresh_database(admin_dsn: str, template: str | None) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    await _admin_execute(admin_dsn, f'CREATE DATABASE "{name}"{clause}')
    return name


@pytest.fixture
async def db_dsn(pg_admin_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    name = await _fresh_database(pg_admin_dsn, TEMPLATE_DB)
    yield with_database(pg_admin_dsn, name)
    await _admin_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_db_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """An empty database of this test's own, for the migration tests."""
    name = await _fresh_database(pg_admin_dsn, None)
    yield with_database(pg_admin_dsn, name)
    await _admin_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_dsn)
    await init_connection(connection)
    yield connection
    await connection.close()


@pytest.fixture
def token_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def write_config(tmp_path: Path, token_key: str) -> ConfigWriter:
    return ConfigWriter(tmp_path, token_key)


class ConfigWriter:
    """Writes a complete config file (with its secret files) for a test, with overrides per section."""

    def __init__(self, directory: Path, token_key: str) -> None:
        self.directory = directory
        self.token_key = token_key

    def __call__(self, dsn: str = "postgresql://u:p@localhost/db", **sections: dict[str, object]) -> Path:
        key_file = self.directory / "token.key"
        key_file.write_text(self.token_key + "\n")
        secret_file = self.directory / "client_secret"
        secret_file.write_text("test-client-secret-value\n")
        config: dict[str, dict[str, object]] = {
            "database": {"dsn": dsn},
            "amazon": {"client_id": "amzn1.application-oa2-client.test", "client_secret_file": str(secret_file)},
            "security": {"token_key_file": str(key_file)},
        }
        for section, values in sections.items():
            config.setdefault(section, {}).update(values)
        path = self.directory / "recomamp.toml"
        path.write_text(_to_toml(config))
        return path


def _to_toml(config: dict[str, dict[str, object]]) -> str:
    lines: list[str] = []
    for section, values in config.items():
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        for key, value in values.items():
            if key not in tables:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, table in tables.items():
            lines.append(f"[{section}.{key}]")
            for inner_key, inner_value in table.items():
                lines.append(f"{inner_key} = {_toml_value(inner_value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(value)
