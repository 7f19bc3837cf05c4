"""`make demo`: the whole pipeline on embedded servers, with no Amazon or Snowflake account.

Starts an embedded Postgres (pgserver) in a local folder, the AMC/LWA simulator, and fakesnow in
server mode; migrates; creates three users with an instance, a Snowflake config and Snowflake-enabled
schedules each (one healthy, one whose refresh token was revoked, one whose token endpoint fails twice
with 503 and then recovers); makes the schedules due; runs the real daemon (`recomamp run --once`) as a
child process; prints the runs and the rows in Snowflake; and stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from recomamp.crypto import SecretBox, generate_key
from recomamp.domain.models import ScheduleCreatePreset
from recomamp.sandbox.embedded import FakeSnowflake, recreate_database, start_fakesnow, start_postgres
from recomamp.sandbox.seed import add_sandbox_user
from recomamp.sandbox.simulator import AmcSimulator, Fault, InstanceProfile
from recomamp.services import schedules
from recomamp.store import migrations
from recomamp.store.db import init_connection
from recomamp.store.snowflake_configs import SnowflakeConfigInput, save_config

DEMO_DATABASE = "recomamp_demo"
DEMO_SQL = "SELECT event_date, campaign_id, SUM(impressions) FROM sponsored_ads_traffic GROUP BY 1, 2"
SNOWFLAKE_DATABASE = "ANALYTICS"

USERS = (
    ("ada@example.com", "healthy", "amc-ada-1"),
    ("bob@example.com", "revoked refresh token", "amc-bob-1"),
    ("cy@example.com", "token endpoint: 503, 503, then OK", "amc-cy-1"),
)


def _config_text(dsn: str, simulator: AmcSimulator, secret_dir: Path) -> str:
    return f"""# Written by `recomamp demo`: embedded Postgres, the AMC/LWA simulator, fakesnow.
[database]
dsn_file = "{secret_dir / "dsn"}"

[amazon]
client_id = "{simulator.client_id}"
client_secret_file = "{secret_dir / "client_secret"}"
token_url = "{simulator.token_url}"
request_timeout_seconds = 10.0

[amazon.amc_base_url]
na = "{simulator.base_url}"
eu = "{simulator.base_url}"
fe = "{simulator.base_url}"

[security]
token_key_file = "{secret_dir / "token.key"}"

[daemon]
poll_interval_seconds = 0.5
replica_name = "demo"

[retry]
# The production waits are 5/10/20 s and 10/20/40 s; the demo shortens them.
lwa_server_error_waits = [0.5, 1.0, 2.0]
lwa_throttle_waits = [0.5, 1.0, 2.0]
lwa_network_waits = [0.5, 1.0, 2.0]
amc_waits = [0.2, 0.5, 1.0]
amc_poll_initial_seconds = 0.5
amc_poll_max_seconds = 1.0

[snowflake]
batch_rows = 500

[logging]
level = "info"
"""


async def _prepare(admin_dsn: str, simulator: AmcSimulator, snow: FakeSnowflake, workdir: Path) -> tuple[str, Path]:
    dsn = await recreate_database(admin_dsn, DEMO_DATABASE)
    secret_dir = workdir / "secrets"
    secret_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_key()  # the demo's own throwaway key; the daemon itself never makes one
    for name, value in (("dsn", dsn), ("client_secret", simulator.client_secret), ("token.key", key)):
        path = secret_dir / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    config_path = workdir / "recomamp.toml"
    config_path.write_text(_config_text(dsn, simulator, secret_dir))

    from pydantic import SecretStr

    box = SecretBox([SecretStr(key)])
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        await migrations.migrate_up(connection)
        now = datetime.now(UTC)
        for index, (email, _, instance) in enumerate(USERS):
            user_id = await add_sandbox_user(
                connection,
                box,
                simulator,
                email,
                instance,
                advertiser_id=f"ENTITY{index + 1}",
                instance_name=f"{email.split('@')[0]} US",
            )
            await save_config(
                connection,
                user_id,
                SnowflakeConfigInput(
                    account="demo-account",
                    username=f"LOADER_{index + 1}",
                    database=SNOWFLAKE_DATABASE,
                    default_schema=f"AMC_{email.split('@')[0].upper()}",
                    password="demo-password",
                    host=snow.host,
                    port=snow.port,
                    protocol="http",
                ),
                encrypt=box.encrypt,
            )
            for name, preset, table, keys in (
                ("daily campaign traffic", "daily", "daily_campaign_traffic", None),
                ("weekly reach by campaign", "weekly", "weekly_reach", ["event_date", "campaign_id"]),
            ):
                schedule_id = await schedules.create(
                    connection,
                    ScheduleCreatePreset(
                        name=name,
                        user_email=email,
                        instance_id=instance,
                        preset=preset,
                        time_of_day="06:00",
                        day_of_week="monday" if preset == "weekly" else None,
                        timezone="America/New_York",
                        sql_query=DEMO_SQL,
                        snowflake_table_name=table,
                        snowflake_key_columns=keys,
                    ),
                    now,
                )
                # Due a minute ago, as if the fire time had just passed.
                await connection.execute(
                    "UPDATE workflow_schedules SET next_run_at = $2 WHERE id = $1",
                    schedule_id,
                    now - timedelta(minutes=1),
                )
    finally:
        await connection.close()
    simulator.revoke("bob@example.com")
    simulator.add_faults("lwa_token", Fault.http(503), Fault.http(503), user="cy@example.com")
    return dsn, config_path


async def _run_daemon(config_path: Path, log_path: Path) -> int:
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "recomamp",
            "run",
            "--once",
            "--config",
            str(config_path),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        return await process.wait()


def _snowflake_counts(snow: FakeSnowflake, tables: list[str]) -> list[tuple[str, int]]:
    import snowflake.connector

    connection = snowflake.connector.connect(
        account="demo-account",
        user="DEMO_READER",
        password="x",
        host=snow.host,
        port=snow.port,
        protocol="http",
        database=SNOWFLAKE_DATABASE,
        login_timeout=10,
        network_timeout=30,
    )
    try:
        cursor = connection.cursor()
        counts = []
        for table in tables:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            row = cursor.fetchone()
            counts.append((table, int(row[0]) if row else 0))
        return counts
    finally:
        connection.close()


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


async def _demo(workdir: Path) -> int:
    started = time.monotonic()
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    print("recomamp demo: starting an embedded Postgres, the AMC/LWA simulator and a local Snowflake emulator")
    admin_dsn = await asyncio.to_thread(start_postgres, workdir / "postgres")
    simulator = AmcSimulator(
        default_profile=InstanceProfile(rows=240, files=3, pending_seconds=0.5, running_seconds=1.0)
    )
    await simulator.start()
    snow = await asyncio.to_thread(start_fakesnow, None, workdir / "fakesnow.log")
    try:
        dsn, config_path = await _prepare(admin_dsn, simulator, snow, workdir)
        print("users:")
        for email, story, instance in USERS:
            print(f"  {email:<18} {story:<36} instance {instance}, 2 Snowflake-enabled schedules")
        print(f"running the daemon once: recomamp run --once --config {config_path}")
        log_path = workdir / "daemon.log"
        code = await _run_daemon(config_path, log_path)
        print(f"the daemon exited with {code} (1: some runs failed, as they should here); its JSON log: {log_path}\n")

        connection = await asyncpg.connect(dsn)
        try:
            runs = await connection.fetch(
                "SELECT r.id, u.email, s.name, r.status, r.attempt, r.snowflake_rows, r.snowflake_table, "
                "r.error_message FROM schedule_runs r JOIN workflow_schedules s ON s.id = r.schedule_id "
                "JOIN users u ON u.id = s.owner_id ORDER BY u.email, s.name"
            )
        finally:
            await connection.close()
        table_rows = []
        for run in runs:
            token_calls = simulator.calls_by_user[("lwa_token", run["email"])]
            message = run["error_message"] or ""
            table_rows.append(
                [
                    str(run["id"]),
                    run["email"],
                    run["name"],
                    run["status"],
                    str(run["attempt"]),
                    str(token_calls),
                    str(run["snowflake_rows"] if run["snowflake_rows"] is not None else "-"),
                    (message[:90] + "...") if len(message) > 90 else message,
                ]
            )
        _print_table(
            table_rows, ["run", "user", "schedule", "status", "attempt", "LWA calls", "rows in Snowflake", "message"]
        )
        failed = [run for run in runs if run["error_message"]]
        if failed:
            print("\nwhat the failed runs say (recomamp runs show ID prints the rest):")
            for run in failed:
                print(f"  run {run['id']}: {run['error_message']}")
        tables = sorted({r["snowflake_table"] for r in runs if r["snowflake_table"] and r["snowflake_rows"]})
        print("\nrows in Snowflake:")
        for table, count in await asyncio.to_thread(_snowflake_counts, snow, tables):
            print(f"  {table:<45} {count:>6}")
        print(
            f"\nAMC executions created: {simulator.calls['create_execution']}; "
            f"LWA token calls: {simulator.calls['lwa_token']}; took {time.monotonic() - started:.1f} s"
        )
        by_user: dict[str, set[str]] = {}
        for run in runs:
            by_user.setdefault(run["email"], set()).add(run["status"])
        expected = {
            "ada@example.com": {"succeeded"},
            "bob@example.com": {"failed"},
            "cy@example.com": {"succeeded"},
        }
        if by_user != expected:
            print(f"unexpected outcome: {by_user}", file=sys.stderr)
            return 1
        print(
            "as expected: ada's and cy's runs landed in Snowflake (cy's after two 503s), "
            "bob's failed fast and says he must re-authenticate."
        )
        return 0
    finally:
        await simulator.stop()
        snow.stop()


def run_demo(workdir: Path) -> int:
    return asyncio.run(_demo(workdir))
