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
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from recomamp.crypto import SecretBox, generate_key
from recomamp.domain.models import ScheduleCreatePreset
from recomamp.sandbox.embedded import FakeSnowflake, recreate_database, start_fakesnow, start_postgres
from recomamp.sandbox.seed import add_sandbox_user
from recomamp.sandbox.simulator import AmcSimulator, Fault, InstanceProfile
from recomamp.services import schedules
from recomamp.store import migrations
from recomamp.store import runs as run_store
from recomamp.store import schedules as schedule_store
from recomamp.store.db import init_connection
from recomamp.store.snowflake_configs import SnowflakeConfigInput, save_config

DEMO_DATABASE = "recomamp_demo"
DEMO_SQL = "SELECT event_date, campaign_id, SUM(impressions) FROM sponsored_ads_traffic GROUP BY 1, 2"
SNOWFLAKE_DATABASE = "ANALYTICS"
# Prints the demo's runs (each with `lwa_calls` added) as a table.
ShowRuns = Callable[[list[dict[str, Any]]], None]

USERS = (
    ("ada@example.com", "healthy", "amc-ada-1"),
    ("bob@example.com", "revoked refresh token", "amc-bob-1"),
    ("cy@example.com", "token endpoint: 503, 503, then OK", "amc-cy-1"),
)


def config_text(
    dsn: str, simulator: AmcSimulator, secret_dir: Path, *, alerts_url: str | None, metrics_listen: str = ""
) -> str:
    webhook = (
        f'\n[[notify.webhook]]\nname = "demo-receiver"\nurl = "{alerts_url}"\nformat = "json"\n' if alerts_url else ""
    )
    return f"""# Written by `recomamp demo` / `recomamp standalone`: embedded Postgres, the AMC/LWA simulator, fakesnow.
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

[amazon.consent_url]
na = "{simulator.consent_url}"
eu = "{simulator.consent_url}"
fe = "{simulator.consent_url}"

[security]
token_key_file = "{secret_dir / "token.key"}"

[daemon]
poll_interval_seconds = 0.5
replica_name = "demo"
# Each sandbox keeps its results and its control socket in its own folder: every sandbox database starts
# at run 1, so a spool shared under the home folder would mix two sandboxes' run 1.
spool_dir = "{secret_dir.parent / "spool"}"
control_socket = "{secret_dir.parent / "control.sock"}"

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

[metrics]
listen = "{metrics_listen}"

[logging]
level = "info"
{webhook}"""


async def write_installation(
    admin_dsn: str,
    simulator: AmcSimulator,
    workdir: Path,
    *,
    database: str,
    alerts_url: str | None,
    metrics_listen: str = "",
) -> tuple[str, Path, SecretBox]:
    """A fresh database, its secrets (mode 0600) and a config file pointing at the embedded servers; migrated."""
    from pydantic import SecretStr

    dsn = await recreate_database(admin_dsn, database)
    secret_dir = workdir / "secrets"
    secret_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_key()  # a throwaway key of its own; the daemon itself never makes one
    for name, value in (("dsn", dsn), ("client_secret", simulator.client_secret), ("token.key", key)):
        path = secret_dir / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    config_path = workdir / "recomamp.toml"
    config_path.write_text(
        config_text(dsn, simulator, secret_dir, alerts_url=alerts_url, metrics_listen=metrics_listen)
    )
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        await migrations.migrate_up(connection)
    finally:
        await connection.close()
    return dsn, config_path, SecretBox([SecretStr(key)])


async def seed_user(
    connection: asyncpg.Connection,
    box: SecretBox,
    simulator: AmcSimulator,
    snow: FakeSnowflake,
    email: str,
    instance: str,
    number: int,
    schedule_kinds: tuple[str, ...] = ("daily", "weekly"),
    *,
    due_now: bool = True,
) -> None:
    """A user with a simulator token and instance, a Snowflake config, and Snowflake-enabled schedules due now."""
    name = email.split("@")[0]
    user_id = await add_sandbox_user(
        connection, box, simulator, email, instance, advertiser_id=f"ENTITY{number}", instance_name=f"{name} US"
    )
    # What discovery (GET /amc/accounts, /amc/instances) shows for the user at "Amazon".
    simulator.add_instance(email, instance, account_id=f"ENTITY{number}", name=f"{name} US")
    await save_config(
        connection,
        user_id,
        SnowflakeConfigInput(
            account="demo-account",
            username=f"LOADER_{number}",
            database=SNOWFLAKE_DATABASE,
            default_schema=f"AMC_{name.upper()}",
            password="demo-password",
            host=snow.host,
            port=snow.port,
            protocol="http",
        ),
        encrypt=box.encrypt,
    )
    now = datetime.now(UTC)
    kinds = {
        "daily": ("daily campaign traffic", "daily_campaign_traffic", None),
        "weekly": ("weekly reach by campaign", "weekly_reach", ["event_date", "campaign_id"]),
    }
    for preset in schedule_kinds:
        title, table, keys = kinds[preset]
        schedule_id = await schedules.create(
            connection,
            ScheduleCreatePreset(
                name=title,
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
        if due_now:  # due a minute ago, as if the fire time had just passed
            await schedule_store.make_due(connection, schedule_id, now - timedelta(minutes=1))


async def _prepare(
    admin_dsn: str, simulator: AmcSimulator, snow: FakeSnowflake, workdir: Path, alerts_url: str
) -> tuple[str, Path]:
    dsn, config_path, box = await write_installation(
        admin_dsn, simulator, workdir, database=DEMO_DATABASE, alerts_url=alerts_url
    )
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        for index, (email, _, instance) in enumerate(USERS):
            await seed_user(connection, box, simulator, snow, email, instance, index + 1)
    finally:
        await connection.close()
    simulator.revoke("bob@example.com")
    simulator.add_faults("lwa_token", Fault.http(503), Fault.http(503), user="cy@example.com")
    return dsn, config_path


class AlertReceiver:
    """The demo's webhook receiver: prints each alert as it arrives, as a chat channel would show it."""

    def __init__(self) -> None:
        from recomamp.sandbox.embedded import free_port

        self.port = free_port()
        self.received: list[dict[str, object]] = []
        self._app = web.Application()
        self._app.router.add_post("/alerts", self._alert)
        self._runner = web.AppRunner(self._app, access_log=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _alert(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        print(f"  [webhook receiver] {body.get('event')}: {body.get('text')}")
        return web.Response(text="ok")


async def _authorize_bob(config_path: Path, simulator: AmcSimulator) -> int:
    """What an operator does for bob: `users authorize --paste --rerun-failed`; the demo plays bob's browser."""
    import aiohttp

    simulator.consent_user = "bob@example.com"  # bob is signed in at amazon.com and approves
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recomamp", "users", "authorize", "bob@example.com", "--paste", "--rerun-failed",
        "--config", str(config_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert process.stdout is not None
    consent = ""
    while not consent:
        line = (await process.stdout.readline()).decode()
        if not line:
            break
        if line.strip().startswith("http"):
            consent = line.strip()
    if not consent:
        return await process.wait()
    async with aiohttp.ClientSession() as session, session.get(consent, allow_redirects=False) as page:
        redirected = page.headers.get("Location", "")
    print("  (the demo approves on Amazon's consent page and pastes the URL the browser is sent to)")
    out, _ = await process.communicate((redirected + "\n").encode())
    for line in out.decode().splitlines():
        if line.strip() and not line.startswith("Then paste"):
            print(f"  {line}")
    return process.returncode if process.returncode is not None else 1


async def _run_daemon(config_path: Path, log_path: Path) -> int:
    with log_path.open("ab") as log:
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


async def _runs(dsn: str) -> list[dict[str, Any]]:
    """Every run of the demo, with its user's email and schedule's name, by user, schedule and id."""
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        listed = await run_store.list_runs(connection, limit=1000)
    finally:
        await connection.close()
    return sorted(
        ({**run, "email": run["user_email"], "name": run["schedule_name"]} for run in listed),
        key=lambda run: (run["email"], run["name"], run["id"]),
    )


async def _report(
    runs: list[dict[str, Any]], simulator: AmcSimulator, snow: FakeSnowflake, show_runs: ShowRuns
) -> None:
    """The runs as a table (with each user's LWA calls), what the failed ones say, and the rows in Snowflake."""
    show_runs([run | {"lwa_calls": simulator.calls_by_user[("lwa_token", run["email"])]} for run in runs])
    failed = [run for run in runs if run["error_message"]]
    if failed:
        print("\nwhat the failed runs say (`recomamp runs show ID` shows each run whole):")
        for run in failed:
            print(
                textwrap.fill(
                    run["error_message"], 118, initial_indent=f"  run {run['id']}: ", subsequent_indent="    "
                )
            )
    tables = sorted({r["snowflake_table"] for r in runs if r["snowflake_table"] and r["snowflake_rows"]})
    print("\nrows in Snowflake:")
    for table, count in await asyncio.to_thread(_snowflake_counts, snow, tables):
        print(f"  {table:<45} {count:>6}")


def _as_expected(runs: list[dict[str, Any]], authorized: int, again: int, alerts: list[object]) -> bool:
    """Whether each user's runs ended as their story says, bob's authorize and rerun worked, and the alert came;
    says which on stderr when not."""
    by_user: dict[str, set[str]] = {}
    for run in runs:
        by_user.setdefault(run["email"], set()).add(run["status"])
    expected = {
        "ada@example.com": {"succeeded"},
        "bob@example.com": {"failed", "succeeded"},
        "cy@example.com": {"succeeded"},
    }
    if by_user != expected or authorized != 0 or again != 0 or "user_needs_reauth" not in alerts:
        print(f"unexpected outcome: {by_user}, authorize exit {authorized}, alerts {alerts}", file=sys.stderr)
        return False
    print(
        "as expected: ada's and cy's runs landed in Snowflake (cy's after two 503s); bob's failed fast, "
        "the webhook receiver got the alert naming the command, and after `users authorize` his reruns landed."
    )
    return True


async def _demo(workdir: Path, show_runs: ShowRuns) -> int:
    started = time.monotonic()
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    print("recomamp demo: starting an embedded Postgres, the AMC/LWA simulator and a local Snowflake emulator")
    admin_dsn = await asyncio.to_thread(start_postgres, workdir / "postgres")
    simulator = AmcSimulator(
        default_profile=InstanceProfile(rows=240, files=3, pending_seconds=0.5, running_seconds=1.0)
    )
    await simulator.start()
    snow = await asyncio.to_thread(start_fakesnow, None, workdir / "fakesnow.log")
    receiver = AlertReceiver()
    await receiver.start()
    try:
        dsn, config_path = await _prepare(admin_dsn, simulator, snow, workdir, receiver.url)
        print("users:")
        for email, story, instance in USERS:
            print(f"  {email:<18} {story:<36} instance {instance}, 2 Snowflake-enabled schedules")
        print(f"running the daemon once: recomamp run --once --config {config_path}")
        log_path = workdir / "daemon.log"
        log_path.unlink(missing_ok=True)
        code = await _run_daemon(config_path, log_path)
        print(f"the daemon exited with {code} (1: some runs failed, as they should here); its JSON log: {log_path}\n")
        print("bob must re-authenticate: recomamp users authorize bob@example.com --paste --rerun-failed")
        authorized = await _authorize_bob(config_path, simulator)
        print("running the daemon once more: bob's runs, queued again for their own windows")
        again = await _run_daemon(config_path, log_path)
        print(f"the daemon exited with {again}\n")

        runs = await _runs(dsn)
        await _report(runs, simulator, snow, show_runs)
        print(
            f"\nAMC executions created: {simulator.calls['create_execution']}; "
            f"LWA token calls: {simulator.calls['lwa_token']}; took {time.monotonic() - started:.1f} s"
        )
        return 0 if _as_expected(runs, authorized, again, [body.get("event") for body in receiver.received]) else 1
    finally:
        await receiver.stop()
        await simulator.stop()
        snow.stop()


def run_demo(workdir: Path, show_runs: ShowRuns) -> int:
    """`show_runs` prints the table of runs: the CLI's output layer, handed in (the sandbox sits below the CLI)."""
    return asyncio.run(_demo(workdir, show_runs))
