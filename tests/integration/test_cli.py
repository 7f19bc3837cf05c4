"""The CLI against a real database: good paths, and bad input that exits 2 with one line and writes nothing."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from recomamp.cli import build_parser, main
from recomamp.sandbox.embedded import FakeSnowflake, free_port
from recomamp.store import migrations
from tests.conftest import ConfigWriter


@pytest.fixture
def config_path(db_dsn: str, write_config: ConfigWriter) -> Path:
    return write_config(dsn=db_dsn)


async def cli(config_path: Path, *argv: str, stdin: str | None = None) -> int:
    def call() -> int:
        import io
        import sys

        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        try:
            return main([*argv[:2], "--config", str(config_path), *argv[2:]] if len(argv) > 1 else [*argv])
        finally:
            sys.stdin = sys.__stdin__

    return await asyncio.to_thread(call)


@pytest.fixture
async def seeded(config_path: Path) -> Path:
    assert await cli(config_path, "users", "add", "ada@example.com") == 0
    assert await cli(config_path, "users", "set-token", "ada@example.com", stdin="Atzr|fresh-token\n") == 0
    assert (
        await cli(
            config_path,
            "instances",
            "add",
            "ada@example.com",
            "--instance-id",
            "amc1",
            "--advertiser-id",
            "ENT1",
            "--marketplace-id",
            "ATVPDKIKX0DER",
        )
        == 0
    )
    return config_path


BASE = ["schedules", "create", "--user", "ada@example.com", "--instance", "amc1", "--name", "n"]


async def test_create_show_update_preview_pause_run_now(
    seeded: Path, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await cli(
            seeded,
            *BASE,
            "--sql",
            "SELECT 1",
            "--preset",
            "weekly",
            "--day-of-week",
            "mon",
            "--time",
            "06:30",
            "--timezone",
            "Europe/London",
            "--snowflake-table",
            "weekly_results",
            "--snowflake-key-columns",
            "a,b",
        )
        == 0
    )
    row = await db.fetchrow("SELECT * FROM workflow_schedules")
    assert row is not None
    assert (row["snowflake_enabled"], row["snowflake_table_name"], row["snowflake_key_columns"]) == (
        True,
        "weekly_results",
        ["a", "b"],
    )
    capsys.readouterr()
    assert await cli(seeded, "schedules", "show", str(row["id"]), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["snowflake_schema_name"] is None and shown["day_of_week"] == 0
    assert await cli(seeded, "schedules", "update", str(row["id"]), "--no-snowflake", "--time", "07:00") == 0
    assert await db.fetchval("SELECT snowflake_enabled FROM workflow_schedules") is False
    capsys.readouterr()
    assert await cli(seeded, "schedules", "preview", str(row["id"]), "--count", "3", "--json") == 0
    fires = json.loads(capsys.readouterr().out)["fires"]
    london = ZoneInfo("Europe/London")
    assert len(fires) == 3
    assert all(datetime.fromisoformat(f["fire_at"]).astimezone(london).strftime("%H:%M") == "07:00" for f in fires)
    assert await cli(seeded, "schedules", "pause", str(row["id"])) == 0
    assert await cli(seeded, "schedules", "run-now", str(row["id"])) == 0
    assert await db.fetchval("SELECT count(*) FROM schedule_runs WHERE trigger = 'manual'") == 1
    assert await cli(seeded, "runs", "list", "--json") == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--sql", "S", "--time", "06:00", "--timezone", "Mars/Base"],
            "--timezone: 'Mars/Base' is not an IANA timezone",
        ),
        (["--sql", "S", "--preset", "custom", "--cron", "99 * * * *"], "--cron: '99 * * * *'"),
        (["--sql", "S", "--preset", "monthly", "--day-of-month", "32", "--time", "06:00"], "--day-of-month: 32"),
        (["--sql", "S", "--time", "25:00"], "--time: '25:00' is not a time; use HH:MM"),
        (["--sql", "S", "--time", "06:00", "--snowflake-table", "bad name;"], "--snowflake-table: 'bad name;'"),
        (["--time", "06:00"], "give exactly one: ad-hoc SQL, or a saved workflow id"),
        (["--sql", "S", "--workflow-id", "wf", "--time", "06:00"], "give exactly one"),
        (
            ["--workflow-id", "wf", "--param", "novalue", "--time", "06:00"],
            "--param: 'novalue' is not KEY=VALUE",
        ),
    ],
)
async def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    seeded: Path, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    capsys.readouterr()
    assert await cli(seeded, *BASE, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert await db.fetchval("SELECT count(*) FROM workflow_schedules") == 0


async def test_unknown_user_and_instance(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert (
        await cli(
            seeded,
            "schedules",
            "create",
            "--user",
            "nobody@example.com",
            "--instance",
            "amc1",
            "--name",
            "n",
            "--sql",
            "S",
            "--time",
            "06:00",
        )
        == 2
    )
    assert "user: no user nobody@example.com" in capsys.readouterr().err
    assert (
        await cli(
            seeded,
            "schedules",
            "create",
            "--user",
            "ada@example.com",
            "--instance",
            "amc9",
            "--name",
            "n",
            "--sql",
            "S",
            "--time",
            "06:00",
        )
        == 2
    )
    assert "instance: the user has no AMC instance amc9" in capsys.readouterr().err


async def test_the_refresh_token_is_stored_encrypted_and_snowflake_show_masks(
    seeded: Path, db: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "fresh-token" not in str(await db.fetchval("SELECT refresh_token_encrypted FROM users"))
    password = tmp_path / "pw"
    password.write_text("sf-secret-pw\n")
    assert (
        await cli(
            seeded,
            "snowflake",
            "set",
            "ada@example.com",
            "--account",
            "acme",
            "--user",
            "LOADER",
            "--database",
            "ANALYTICS",
            "--password-file",
            str(password),
        )
        == 0
    )
    capsys.readouterr()
    assert await cli(seeded, "snowflake", "show", "ada@example.com", "--json") == 0
    out = capsys.readouterr().out
    assert "sf-secret-pw" not in out
    assert json.loads(out)["password"] == "********"
    assert (
        await cli(
            seeded,
            "snowflake",
            "set",
            "ada@example.com",
            "--account",
            "acme",
            "--user",
            "L",
            "--database",
            "bad db",
            "--password-file",
            str(password),
        )
        == 2
    )


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


async def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _command_paths(build_parser())
    assert len(paths) > 30
    for path in paths:
        assert main([*path, "--help"]) == 0, path
    out = capsys.readouterr().out
    assert "--snowflake-key-columns" in out and "--window-start" in out and "--misfire" in out


async def test_migrate_status_down_and_up(
    empty_db_dsn: str, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(dsn=empty_db_dsn)
    assert await cli(path, "migrate", "up") == 0
    versions = [m.version for m in migrations.load_migrations()]
    assert f"applied {len(versions)} migration(s): {versions}" in capsys.readouterr().out
    assert await cli(path, "migrate", "down", "--to", "1") == 0
    assert await cli(path, "migrate", "status", "--json") == 0
    capsys.readouterr()
    assert await cli(path, "migrate", "status", "--json") == 0
    states = json.loads(capsys.readouterr().out)
    assert [(s["version"], s["applied_at"] is not None) for s in states] == [(1, True)] + [
        (v, False) for v in versions[1:]
    ]
    assert await cli(path, "migrate", "down") == 2  # --to is required: rolling back is never implied
    assert await cli(path, "migrate", "down", "--to", "-1") == 2  # one line, no traceback


async def test_snowflake_test_reports_the_version_or_a_clear_error(
    seeded: Path, fakesnow_server: FakeSnowflake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password = tmp_path / "pw"
    password.write_text("pw\n")
    common = [
        "--account",
        "acme",
        "--user",
        "LOADER",
        "--database",
        "ANALYTICS",
        "--password-file",
        str(password),
        "--host",
        fakesnow_server.host,
        "--protocol",
        "http",
    ]
    assert await cli(seeded, "snowflake", "set", "ada@example.com", *common, "--port", str(fakesnow_server.port)) == 0
    capsys.readouterr()
    assert await cli(seeded, "snowflake", "test", "ada@example.com") == 0
    assert "connected to Snowflake as LOADER (password); server version" in capsys.readouterr().out
    closed_port = str(free_port())
    assert await cli(seeded, "snowflake", "set", "ada@example.com", *common, "--port", closed_port) == 0
    capsys.readouterr()
    assert await cli(seeded, "snowflake", "test", "ada@example.com") == 1
    err = capsys.readouterr().err
    assert err.startswith("snowflake test failed: ")
    assert len(err.strip().splitlines()) == 1
