"""`recomamp plan` / `apply` / `export` against a real Postgres: a 3-user, 5-instance, 40-schedule fleet applied
from empty, idempotence, one edit, prune, a refused grid move, the export round trip, concurrent applies, a
daemon that starts a schedule applied while it runs, and bad fleet files that each exit 2 writing nothing."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.services import fleet as fleet_service
from recomamp.services.fleet import ApplyLocked
from recomamp.store import fleet as fleet_store
from recomamp.store import runs as run_store
from recomamp.store.db import init_connection
from tests.conftest import ConfigWriter
from tests.integration.test_cli import cli
from tests.integration.world import add_tenant, wait_until, write_world_config

USERS = ("ana@example.com", "ben@example.com", "cleo@example.com")
# Five instances over three users; cleo has no Snowflake target.
INSTANCES: tuple[tuple[str, str], ...] = (
    ("ana@example.com", "amcana1"),
    ("ana@example.com", "amcana2"),
    ("ben@example.com", "amcben1"),
    ("ben@example.com", "amcben2"),
    ("cleo@example.com", "amccleo1"),
)


@dataclass
class FleetFiles:
    """A fleet of 40 schedules written as a directory: users.toml, one schedules file per user, sql/."""

    root: Path
    secrets: Path
    edits: dict[str, dict[str, str]] = field(default_factory=dict)  # schedule name → key → TOML value
    dropped: set[str] = field(default_factory=set)

    def schedule(self, index: int) -> dict[str, str]:
        user, instance = INSTANCES[index % 5]
        keys: dict[str, str] = {"user": _q(user), "name": _q(f"s{index:02d}"), "instance": _q(instance)}
        kind = index % 4
        if kind == 0:
            keys.update(preset='"daily"', time='"06:00"', timezone='"Europe/Berlin"')
        elif kind == 1:
            keys.update(preset='"weekly"', day_of_week='"monday"', time='"07:30"', timezone='"America/New_York"')
            keys.update(lookback_days="7")
        elif kind == 2:
            keys.update(preset='"monthly"', day_of_month="2", time='"05:00"', timezone='"UTC"')
        else:
            keys.update(cron='"15 */6 * * *"', timezone='"Asia/Tokyo"', lookback_days="1")
        if index % 3 == 0:
            keys["sql_file"] = _q(f"sql/s{index:02d}.sql")
        elif index % 3 == 1:
            keys["sql"] = _q(f"SELECT campaign_id, SUM(impressions) AS impressions_{index} FROM t GROUP BY 1")
        else:
            keys.update(workflow_id=_q(f"wf_{index}"), parameters='{ brand = "acme" }')
        if user != "cleo@example.com" and index % 2 == 0:
            keys["snowflake"] = f'{{ table = "T_{index:02d}", key_columns = ["campaign_id"] }}'
        if index == 39:
            keys["paused"] = "true"
        keys.update(self.edits.get(f"s{index:02d}", {}))
        return keys

    def write(self) -> Path:
        (self.root / "sql").mkdir(parents=True, exist_ok=True)
        for index in range(0, 40, 3):
            (self.root / "sql" / f"s{index:02d}.sql").write_text(
                f"-- schedule {index}\nSELECT campaign_id, SUM(impressions) AS impressions\nFROM t\nGROUP BY 1\n"
            )
        self.secrets.mkdir(parents=True, exist_ok=True)
        users: list[str] = []
        for user in USERS:
            users += ["[[users]]", f"email = {_q(user)}", 'region = "na"', ""]
            for owner, instance in INSTANCES:
                if owner == user:
                    users += ["[[users.instances]]", f"instance_id = {_q(instance)}"]
                    users += [f'advertiser_id = "ENT-{instance}"', 'marketplace_id = "ATVPDKIKX0DER"', ""]
            if user != "cleo@example.com":
                secret = self.secrets / f"{user}.pw"
                secret.write_text(f"pw-of-{user}\n")
                users += ["[users.snowflake]", 'account = "acme"', 'user = "LOADER"', 'database = "AMC"']
                users += ['schema = "RAW"', f"password = {{ file = {_q(str(secret))} }}", ""]
        (self.root / "users.toml").write_text("\n".join(users))
        for user in USERS:
            lines: list[str] = []
            for index in range(40):
                keys = self.schedule(index)
                if keys["user"] != _q(user) or f"s{index:02d}" in self.dropped:
                    continue
                lines += ["[[schedules]]", *(f"{k} = {v}" for k, v in keys.items()), ""]
            (self.root / f"schedules-{user.split('@')[0]}.toml").write_text("\n".join(lines))
        return self.root


def _q(text: str) -> str:
    return json.dumps(text)


@pytest.fixture
def config_path(db_dsn: str, write_config: ConfigWriter) -> Path:
    return write_config(dsn=db_dsn)


@pytest.fixture
def fleet(tmp_path: Path) -> FleetFiles:
    return FleetFiles(tmp_path / "fleet", tmp_path / "secrets")


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    return {
        table: int(await db.fetchval(f"SELECT count(*) FROM {table}"))
        for table in ("users", "amc_instances", "snowflake_configurations", "workflow_schedules", "schedule_runs")
    }


async def one(db: asyncpg.Connection | asyncpg.Pool, sql: str, *args: Any) -> asyncpg.Record:
    row = await db.fetchrow(sql, *args)
    assert row is not None, sql
    return row


async def plan_json(config_path: Path, path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> Any:
    capsys.readouterr()
    assert await cli(config_path, "plan", str(path), "--json", *flags) == 0
    return json.loads(capsys.readouterr().out)


async def test_a_fleet_applied_from_empty_then_again_is_a_no_op(
    config_path: Path, fleet: FleetFiles, db: asyncpg.Connection, box: SecretBox, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fleet.write()
    assert await cli(config_path, "plan", str(path), "--detailed-exitcode") == 1
    planned = capsys.readouterr().out
    assert "Plan: 50 to create, 0 to change, 0 to archive" in planned  # 3 users, 2 targets, 5 instances, 40
    assert await counts(db) == dict.fromkeys(await counts(db), 0)  # plan wrote nothing

    assert await cli(config_path, "apply", str(path), "--yes") == 0
    out, err = capsys.readouterr()
    assert "Applied: 50 created, 0 changed, 0 archived" in out
    assert await counts(db) == {
        "users": 3,
        "amc_instances": 5,
        "snowflake_configurations": 2,
        "workflow_schedules": 40,
        "schedule_runs": 0,
    }
    # Every change is one JSON line naming the operator.
    applied = [json.loads(line) for line in err.splitlines() if '"fleet_change_applied"' in line]
    assert len(applied) == 50 and all(line["operator"] for line in applied)
    # Secrets: encrypted from the file it names, and the reference kept (never the value).
    row = await one(
        db,
        "SELECT c.password_encrypted, c.secret_references FROM snowflake_configurations c "
        "JOIN users u ON u.id = c.user_id WHERE u.email = 'ana@example.com'",
    )
    assert box.decrypt(row["password_encrypted"]) == "pw-of-ana@example.com"
    assert row["secret_references"] == {"password": {"file": str(fleet.secrets / "ana@example.com.pw")}}
    assert "pw-of-" not in out + err
    paused = await db.fetch("SELECT name FROM workflow_schedules WHERE NOT is_active")
    assert [r["name"] for r in paused] == ["s39"]
    from_file = await db.fetchval("SELECT sql_query FROM workflow_schedules WHERE name = 's03'")
    assert from_file.startswith("-- schedule 3\nSELECT")

    assert await cli(config_path, "apply", str(path), "--yes") == 0
    assert "nothing was applied" in capsys.readouterr().out
    assert await cli(config_path, "plan", str(path), "--detailed-exitcode") == 0
    assert "No changes" in capsys.readouterr().out


async def test_one_field_changed_plans_exactly_that_and_apply_makes_it(
    config_path: Path, fleet: FleetFiles, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(config_path, "apply", str(fleet.write()), "--yes") == 0
    before = await one(db, "SELECT id, next_run_at, updated_at FROM workflow_schedules WHERE name = 's04'")
    fleet.edits["s04"] = {"time": '"09:45"'}
    plan = await plan_json(config_path, fleet.write(), capsys)
    assert plan["summary"] == {"create": 0, "change": 1, "archive": 0, "refused": 0}
    (change,) = plan["changes"]
    assert (change["op"], change["name"], change["schedule_id"]) == ("~", "s04", before["id"])
    assert change["fields"] == [{"key": "time", "old": "06:00", "new": "09:45"}]
    assert any("moves the grid" in note for note in change["notes"])

    assert await cli(config_path, "apply", str(fleet.root), "--yes") == 0
    after = await one(db, "SELECT time_of_day, next_run_at, timezone FROM workflow_schedules WHERE name = 's04'")
    assert after["time_of_day"].strftime("%H:%M") == "09:45"
    local = after["next_run_at"].astimezone(ZoneInfo("Europe/Berlin"))
    assert local.strftime("%H:%M") == "09:45"
    untouched = await db.fetchval("SELECT count(*) FROM workflow_schedules WHERE updated_at > $1", before["updated_at"])
    assert untouched == 1


async def test_prune_archives_a_schedule_keeping_its_runs_and_letting_a_run_in_flight_finish(
    config_path: Path, fleet: FleetFiles, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(config_path, "apply", str(fleet.write()), "--yes") == 0
    schedule_id = await db.fetchval("SELECT id FROM workflow_schedules WHERE name = 's07'")
    instance = await db.fetchval("SELECT instance_id FROM workflow_schedules WHERE id = $1", schedule_id)
    now = datetime.now(UTC)
    await run_store.insert_runs(
        db,
        [
            run_store.NewRun(
                schedule_id=schedule_id,
                scheduled_for=now - timedelta(days=1 + n),
                window_start=now - timedelta(days=2 + n),
                window_end=now - timedelta(days=1 + n),
                window_timezone="UTC",
                trigger="schedule",
                priority=0,
                status=status,
            )
            for n, status in enumerate(("pending", "succeeded"))
        ],
    )
    assert instance is not None
    fleet.dropped.add("s07")
    fleet.write()
    # Without --prune a schedule missing from the file is left alone.
    assert (await plan_json(config_path, fleet.root, capsys))["changes"] == []
    plan = await plan_json(config_path, fleet.root, capsys, "--prune")
    (change,) = plan["changes"]
    assert (change["op"], change["name"], change["schedule_id"]) == ("-", "s07", schedule_id)

    assert await cli(config_path, "apply", str(fleet.root), "--prune", "--yes") == 0
    row = await one(
        db,
        "SELECT archived_at, is_active, next_run_at, paused_reason FROM workflow_schedules WHERE id = $1",
        schedule_id,
    )
    assert row["archived_at"] is not None and not row["is_active"] and row["next_run_at"] is None
    assert "--prune" in row["paused_reason"]
    statuses = [
        r["status"]
        for r in await db.fetch(
            "SELECT status FROM schedule_runs WHERE schedule_id = $1 ORDER BY scheduled_for DESC", schedule_id
        )
    ]
    assert statuses == ["pending", "succeeded"]  # the history kept, the run in flight untouched
    # An archived schedule is history: it cannot be resumed by hand.
    capsys.readouterr()
    assert await cli(config_path, "schedules", "resume", str(schedule_id)) == 2
    assert f"schedule: {schedule_id} was archived on" in capsys.readouterr().err
    # The archived schedule is no longer part of the fleet: the same file with --prune plans nothing.
    assert (await plan_json(config_path, fleet.root, capsys, "--prune"))["changes"] == []
    assert await db.fetchval("SELECT count(*) FROM workflow_schedules") == 40


async def test_a_grid_moving_change_without_keys_is_refused_and_nothing_is_written(
    config_path: Path, fleet: FleetFiles, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    # s00: daily, Europe/Berlin, loads T_00; without key columns it replaces each window.
    fleet.edits["s00"] = {"snowflake": '{ table = "T_00" }'}
    assert await cli(config_path, "apply", str(fleet.write()), "--yes") == 0
    schedule_id = await db.fetchval("SELECT id FROM workflow_schedules WHERE name = 's00'")
    start = datetime(2026, 11, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    await run_store.insert_runs(
        db,
        [
            run_store.NewRun(
                schedule_id=schedule_id,
                scheduled_for=start + timedelta(days=14, hours=6),
                window_start=start,
                window_end=start + timedelta(days=1),
                window_timezone="Europe/Berlin",
                trigger="schedule",
                priority=0,
                status="succeeded",
            )
        ],
    )
    await db.execute("UPDATE schedule_runs SET snowflake_status = 'completed' WHERE schedule_id = $1", schedule_id)
    before = await db.fetch("SELECT * FROM workflow_schedules ORDER BY id")
    # Moving the grid by a timezone over a loaded window, plus an unrelated edit: neither may land.
    fleet.edits["s00"]["timezone"] = '"America/New_York"'
    fleet.edits["s05"] = {"data_lag_days": "3"}
    fleet.write()
    capsys.readouterr()
    assert await cli(config_path, "plan", str(fleet.root)) == 2
    out = capsys.readouterr().out
    assert "✗ refused: the edit moves the grid" in out and "--snowflake-key-columns" in out
    assert await cli(config_path, "apply", str(fleet.root), "--yes") == 2
    out, err = capsys.readouterr()
    assert "refused" in out and "nothing was applied" in err
    assert [dict(r) for r in await db.fetch("SELECT * FROM workflow_schedules ORDER BY id")] == [
        dict(r) for r in before
    ]


async def test_export_then_plan_shows_no_change(
    config_path: Path, fleet: FleetFiles, db: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(config_path, "apply", str(fleet.write()), "--yes") == 0
    # A schedule made by hand, with a multi-line query, joins the fleet through export.
    await db.execute(
        "UPDATE workflow_schedules SET sql_query = $1 WHERE name = 's01'", "SELECT a AS x,\n  'it''s' AS y\nFROM t\n"
    )
    # So does a user made one command at a time, before fleets (no region of their own, no secret reference).
    assert await cli(config_path, "users", "add", "dora@example.com") == 0
    assert (
        await cli(
            config_path,
            "instances",
            "add",
            "dora@example.com",
            "--instance-id",
            "amcd",
            "--region",
            "eu",
            "--advertiser-id",
            "E",
            "--marketplace-id",
            "M",
        )
        == 0
    )
    assert (
        await cli(
            config_path,
            "schedules",
            "create",
            "--user",
            "dora@example.com",
            "--instance",
            "amcd",
            "--name",
            "by hand",
            "--preset",
            "weekly",
            "--day-of-week",
            "fri",
            "--time",
            "23:59",
            "--sql",
            "SELECT 1 AS one FROM t",
            "--misfire",
            "catch-up",
            "--allow-overlap",
            "--lookback-days",
            "30",
        )
        == 0
    )
    exported = tmp_path / "exported.toml"
    assert await cli(config_path, "export", f"--output={exported}") == 0
    capsys.readouterr()
    assert await cli(config_path, "plan", str(exported), "--detailed-exitcode", "--prune") == 0, capsys.readouterr()
    text = exported.read_text()
    assert "pw-of-" not in text and str(fleet.secrets / "ana@example.com.pw") in text
    assert text.count("[[schedules]]") == 41 and text.count("[[users]]") == 4
    one = tmp_path / "ben.toml"
    assert await cli(config_path, "export", f"--output={one}", "--user", "BEN@example.com") == 0
    assert one.read_text().count("[[users]]") == 1
    assert await cli(config_path, "plan", str(one), "--detailed-exitcode", "--prune") == 0
    assert await cli(config_path, "export", "--user=nobody@example.com") == 2


async def test_two_applies_at_once_cannot_interleave(
    config_path: Path,
    fleet: FleetFiles,
    db_dsn: str,
    db: asyncpg.Connection,
    box: SecretBox,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = fleet.write()
    holder = await asyncpg.connect(db_dsn)
    try:
        await fleet_store.name_session(holder, "recomamp apply by alice@ops-1 pid 4242")
        transaction = holder.transaction()
        await transaction.start()
        assert await fleet_store.try_apply_lock(holder)
        capsys.readouterr()
        assert await cli(config_path, "apply", str(path), "--yes") == 1
        err = capsys.readouterr().err
        assert "another apply holds the fleet lock: recomamp apply by alice@ops-1 pid 4242" in err
        assert (await counts(db))["users"] == 0
        # With --wait, the second apply waits for the first and then applies.
        waiting = asyncio.create_task(cli(config_path, "apply", str(path), "--yes", "--wait", "30"))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        await transaction.rollback()
        assert await waiting == 0
    finally:
        await holder.close()
    assert "waiting for the fleet lock, held by recomamp apply by alice@ops-1" in capsys.readouterr().err
    assert (await counts(db))["workflow_schedules"] == 40

    # Two real applies of one edit at the same moment: one makes it, the other then finds nothing to do.
    fleet.edits["s02"] = {"catch_up_limit": "5"}
    loaded = fleet_service.load(fleet.write())
    connections = [await asyncpg.connect(db_dsn) for _ in range(2)]
    try:
        for connection in connections:
            await init_connection(connection)
        results = await asyncio.gather(
            *(
                fleet_service.apply(
                    c, loaded, box=box, now=datetime.now(UTC), prune=False, operator=f"op{n}", wait_seconds=20
                )
                for n, c in enumerate(connections)
            )
        )
    finally:
        for connection in connections:
            await connection.close()
    assert sorted(r.applied for r in results) == [False, True]
    assert await db.fetchval("SELECT catch_up_limit FROM workflow_schedules WHERE name = 's02'") == 5
    other = await asyncpg.connect(db_dsn)
    try:
        await init_connection(other)
        async with db.transaction():
            assert await fleet_store.try_apply_lock(db)
            with pytest.raises(ApplyLocked, match="another apply holds the fleet lock"):
                await fleet_service.apply(
                    other, loaded, box=box, now=datetime.now(UTC), prune=False, operator="late", wait_seconds=0
                )
    finally:
        await other.close()


async def test_a_running_daemon_starts_a_schedule_applied_while_it_sleeps_and_finishes_its_run_when_pruned(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: Any,
    write_config: ConfigWriter,
    tmp_path: Path,
) -> None:
    tenant = await add_tenant(pool, box, simulator, "dan@example.com", "amcdan")
    config_path = write_world_config(write_config, db_dsn, simulator, poll_interval_seconds=60.0)
    daemon = wiring.daemon(load_config(config_path))
    serving = asyncio.create_task(daemon.run())
    await asyncio.sleep(1.0)  # past its first poll, with nothing due: it sleeps for a minute
    fleet_file = tmp_path / "dan.toml"
    fleet_file.write_text(
        f"""
[[users]]
email = "{tenant.email}"
region = "na"
[[users.instances]]
instance_id = "amcdan"
advertiser_id = "ENT-amcdan"
marketplace_id = "ATVPDKIKX0DER"

[[schedules]]
user = "{tenant.email}"
name = "every-minute"
instance = "amcdan"
cron = "* * * * *"
data_lag_days = 0
sql = "SELECT campaign_id, SUM(impressions) AS impressions FROM sponsored_ads_traffic GROUP BY 1"
"""
    )
    async with pool.acquire() as connection:
        result = await fleet_service.apply(
            connection, fleet_service.load(fleet_file), box=box, now=datetime.now(UTC), prune=False, operator="t"
        )
    assert result.applied
    fire = await pool.fetchval("SELECT next_run_at FROM workflow_schedules WHERE name = 'every-minute'")

    async def started() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM schedule_runs WHERE started_at IS NOT NULL"))

    await wait_until(started, seconds=75, what="the applied schedule's first run to start")
    run = await one(pool, "SELECT id, scheduled_for, started_at FROM schedule_runs")
    # Pruned while its run is in flight: the schedule is archived, the run still finishes.
    without = tmp_path / "without.toml"
    without.write_text(fleet_file.read_text().split("[[schedules]]")[0])
    async with pool.acquire() as connection:
        pruned = await fleet_service.apply(
            connection, fleet_service.load(without), box=box, now=datetime.now(UTC), prune=True, operator="t"
        )
    assert [c.op for c in pruned.plan.changes] == ["-"]

    async def succeeded() -> bool:
        return bool(await pool.fetchval("SELECT status FROM schedule_runs WHERE id = $1", run["id"]) == "succeeded")

    await wait_until(succeeded, seconds=30, what="the archived schedule's run in flight to finish")
    daemon.request_stop()
    assert await serving == 0
    assert await pool.fetchval("SELECT count(*) FROM schedule_runs") == 1
    assert await pool.fetchval("SELECT archived_at IS NOT NULL FROM workflow_schedules") is True
    assert run["scheduled_for"] == fire
    # On time: the NOTIFY made it re-read its next due time, not its 60 s poll.
    assert run["started_at"] - fire < timedelta(seconds=5), (run["started_at"], fire, time.time())


# --- bad fleet files ---------------------------------------------------------------------------------------

USER = """
[[users]]
email = "ana@example.com"
region = "eu"
[[users.instances]]
instance_id = "amc1"
advertiser_id = "E1"
marketplace_id = "M1"
[users.snowflake]
account = "acme"
user = "LOADER"
database = "AMC"
password = {{ file = "{secret}" }}
"""
SCHEDULE = """
[[schedules]]
user = "ana@example.com"
name = "s1"
instance = "amc1"
time = "06:00"
sql = "SELECT campaign_id, impressions FROM t"
"""

# name → (the file, the key paths the errors must name). {secret}: an absolute path to a readable secret.
BAD: dict[str, tuple[str, list[str]]] = {
    "unknown key": (
        USER + SCHEDULE + 'tiemzone = "UTC"\n',
        ["schedules[0].tiemzone: unknown key; did you mean 'timezone'"],
    ),
    "unknown user key and missing region": (
        USER.replace('region = "eu"', 'regoin = "eu"') + SCHEDULE,
        ["users[0].regoin: unknown key; did you mean 'region'", "users[0].region: required"],
    ),
    "duplicate schedule name": (
        USER + SCHEDULE + SCHEDULE,
        ["schedules[1].name: ana@example.com has two schedules named 's1'"],
    ),
    "bad timezone": (
        USER + SCHEDULE + 'timezone = "Europe/Berln"\n',
        ["schedules[0].timezone: 'Europe/Berln' is not an IANA"],
    ),
    "bad cron": (
        USER + SCHEDULE.replace('time = "06:00"', 'cron = "61 * * * *"'),
        ["schedules[0].cron: '61 * * * *' is not a valid cron"],
    ),
    "missing sql file": (
        USER + SCHEDULE.replace('sql = "SELECT campaign_id, impressions FROM t"', 'sql_file = "sql/none.sql"'),
        ["schedules[0].sql_file: 'sql/none.sql' does not exist"],
    ),
    "empty sql file": (
        USER + SCHEDULE.replace('sql = "SELECT campaign_id, impressions FROM t"', 'sql_file = "empty.sql"'),
        ["schedules[0].sql_file: 'empty.sql' is empty"],
    ),
    "sql file outside the fleet directory": (
        USER + SCHEDULE.replace('sql = "SELECT campaign_id, impressions FROM t"', 'sql_file = "../outside.sql"'),
        ["schedules[0].sql_file: '../outside.sql' is outside the fleet directory"],
    ),
    "absolute sql file": (
        USER + SCHEDULE.replace('sql = "SELECT campaign_id, impressions FROM t"', 'sql_file = "/etc/passwd"'),
        ["schedules[0].sql_file: '/etc/passwd' is absolute"],
    ),
    "secret given inline": (
        USER.replace('password = {{ file = "{secret}" }}', 'password = "hunter2-inline"') + SCHEDULE,
        ["users[0].snowflake.password: a secret is never written in the fleet file"],
    ),
    "secret file missing": (
        USER.replace("{secret}", "/nonexistent/recomamp/pw") + SCHEDULE,
        ["users[0].snowflake.password: /nonexistent/recomamp/pw does not exist"],
    ),
    "relative secret file": (
        USER.replace("{secret}", "secrets/pw") + SCHEDULE,
        ["users[0].snowflake.password.file: 'secrets/pw' is relative"],
    ),
    "table name with a space": (
        USER + SCHEDULE + 'snowflake = { table = "DAILY SALES" }\n',
        ["schedules[0].snowflake.table: 'DAILY SALES' is not allowed"],
    ),
    "key columns not in the query's output": (
        USER + SCHEDULE + 'snowflake = { table = "T", key_columns = ["campaign", "impressions"] }\n',
        ["schedules[0].snowflake.key_columns: campaign not in the query's output (campaign_id, impressions)"],
    ),
    "user without region": (USER.replace('region = "eu"\n', "") + SCHEDULE, ["users[0].region: required"]),
    "bad region": (
        USER.replace('region = "eu"', 'region = "us"') + SCHEDULE,
        ["users[0].region: Input should be 'na', 'eu' or 'fe'"],
    ),
    "undeclared instance": (
        USER + SCHEDULE.replace('instance = "amc1"', 'instance = "amc9"'),
        ["schedules[0].instance: ana@example.com declares no instance 'amc9'; add it to their instances"],
    ),
    "undeclared user": (
        USER + SCHEDULE.replace('user = "ana@example.com"', 'user = "zed@example.com"'),
        ["schedules[0].user: zed@example.com is not declared"],
    ),
    "sql and workflow both": (
        USER + SCHEDULE + 'workflow_id = "wf"\n',
        ["schedules[0].workflow_id: give exactly one of sql"],
    ),
    "weekly without a weekday": (
        USER + SCHEDULE + 'preset = "weekly"\n',
        ['schedules[0].day_of_week: required with preset = "weekly"'],
    ),
    "bad time": (
        USER + SCHEDULE.replace('"06:00"', '"25:00"'),
        ["schedules[0].time: '25:00' is not a time; use HH:MM"],
    ),
    "parameters without a workflow": (
        USER + SCHEDULE + 'parameters = { brand = "acme" }\n',
        ["schedules[0].parameters: only a saved workflow"],
    ),
    "lookback out of range": (
        USER + SCHEDULE + "lookback_days = 0\n",
        ["schedules[0].lookback_days: 0 is out of range"],
    ),
    "wrong type": (
        USER + SCHEDULE + 'data_lag_days = "two weeks"\n',
        ["schedules[0].data_lag_days: Input should be a valid integer"],
    ),
    "snowflake table for a user without a target": (
        USER.split("[users.snowflake]")[0] + SCHEDULE + 'snowflake = { table = "T" }\n',
        ["schedules[0].snowflake: ana@example.com has no Snowflake target"],
    ),
    "not TOML": (USER + SCHEDULE + "name = = 'x'\n", ["not valid TOML"]),
    "every problem of a file at once": (
        USER.replace('region = "eu"', 'region = "mars"')
        + SCHEDULE.replace('time = "06:00"', 'time = "6 am"')
        + 'timezone = "Nowhere/City"\n'
        + SCHEDULE.replace('name = "s1"', 'name = "s2"').replace('instance = "amc1"', 'instance = "amc2"')
        + 'snowflake = { table = "T;DROP", key_columns = [] }\nextra = 1\n',
        [
            "users[0].region:",
            "schedules[0].time:",
            "schedules[0].timezone:",
            "schedules[1].snowflake.table:",
            "schedules[1].snowflake.key_columns:",
            "schedules[1].extra: unknown key",
            "schedules[1].instance: ana@example.com declares no instance 'amc2'",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_fleet_file_exits_2_naming_every_problem_and_writes_nothing(
    case: str, config_path: Path, db: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD[case]
    root = tmp_path / "fleet"
    root.mkdir()
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    (root / "empty.sql").write_text("  \n")
    (tmp_path / "outside.sql").write_text("SELECT 1 AS a FROM t")
    fleet_file = root / "fleet.toml"
    fleet_file.write_text(text.replace("{secret}", str(secret)).replace("{{", "{").replace("}}", "}"))
    for command in (["plan", str(fleet_file)], ["apply", str(fleet_file), "--yes"]):
        capsys.readouterr()
        assert await cli(config_path, *command) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert "nothing was read or written" in err
        for fragment in expected:
            assert f"{fleet_file}: {fragment}" in err or fragment in err, (fragment, err)
        assert "hunter2" not in err
    assert await counts(db) == dict.fromkeys(await counts(db), 0)


async def test_a_user_declared_in_two_files_of_a_directory(
    config_path: Path, db: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "fleet"
    root.mkdir()
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    user = USER.replace("{secret}", str(secret)).replace("{{", "{").replace("}}", "}")
    (root / "a.toml").write_text(user)
    (root / "b.toml").write_text(user + SCHEDULE)
    assert await cli(config_path, "plan", str(root)) == 2
    err = capsys.readouterr().err
    assert "b.toml: users[0].email: ana@example.com is declared twice (also " in err and "a.toml: users[0])" in err
    assert (await counts(db))["users"] == 0


async def test_plan_json_lists_the_problems_and_apply_without_a_terminal_needs_yes(
    config_path: Path, fleet: FleetFiles, db: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[users]]\nemail = "ana@example.com"\nregion = "xx"\nhome = "?"\n')
    assert await cli(config_path, "plan", str(bad), "--json") == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["valid"] is False
    assert sorted(p["path"] for p in answer["problems"]) == ["users[0].home", "users[0].region"]
    # Not a terminal, no --yes: nothing can be confirmed, so nothing is applied.
    assert await cli(config_path, "apply", str(fleet.write()), stdin="yes\n") == 2
    assert "pass --yes" in capsys.readouterr().err
    assert (await counts(db))["users"] == 0


async def test_a_new_table_for_a_disabled_target_stays_disabled_in_one_apply(
    config_path: Path, fleet: FleetFiles, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.edits["s01"] = {"snowflake": '{ table = "A", enabled = false }'}
    assert await cli(config_path, "apply", str(fleet.write()), "--yes") == 0
    fleet.edits["s01"] = {"snowflake": '{ table = "B", enabled = false }'}
    assert await cli(config_path, "apply", str(fleet.write()), "--yes") == 0
    row = await one(db, "SELECT snowflake_enabled, snowflake_table_name FROM workflow_schedules WHERE name = 's01'")
    assert (row["snowflake_enabled"], row["snowflake_table_name"]) == (False, "B")
    assert (await plan_json(config_path, fleet.root, capsys))["changes"] == []
