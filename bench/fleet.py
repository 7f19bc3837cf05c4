"""Fleet benchmark: `plan` and `apply` of 2,000 schedules (20 users, 40 instances) against a real Postgres.

Figures: reading and validating the files; plan and apply from empty (2,000 creates); plan and apply of the
same file again (nothing to do); plan and apply of an edit to every schedule (its time or its cron: 2,000
changes, each moving the grid).
Each plan is the apply's own work rolled back, so the two should cost about the same.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet
from pydantic import SecretStr

from recomamp.crypto import SecretBox
from recomamp.logs import configure_logging
from recomamp.sandbox.embedded import recreate_database, start_postgres
from recomamp.services import fleet
from recomamp.store import migrations
from recomamp.store.db import init_connection

USERS = 20
INSTANCES_PER_USER = 2
SCHEDULES = 2_000


def write_fleet(root: Path, secret: Path, *, time_of_day: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sql").mkdir(exist_ok=True)
    (root / "sql" / "daily.sql").write_text("SELECT campaign_id, SUM(impressions) AS impressions FROM t GROUP BY 1\n")
    users: list[str] = []
    for u in range(USERS):
        users += ["[[users]]", f'email = "user{u}@example.com"', 'region = "na"', ""]
        for i in range(INSTANCES_PER_USER):
            users += ["[[users.instances]]", f'instance_id = "amc{u}x{i}"', f'advertiser_id = "E{u}x{i}"']
            users += ['marketplace_id = "ATVPDKIKX0DER"', ""]
        users += ["[users.snowflake]", 'account = "acme"', 'user = "LOADER"', 'database = "AMC"']
        users += [f'password = {{ file = "{secret}" }}', ""]
    (root / "users.toml").write_text("\n".join(users))
    schedules: list[str] = []
    for s in range(SCHEDULES):
        u, i = s % USERS, (s // USERS) % INSTANCES_PER_USER
        schedules += ["[[schedules]]", f'user = "user{u}@example.com"', f'name = "schedule-{s:04d}"']
        schedules += [f'instance = "amc{u}x{i}"', 'timezone = "Europe/Berlin"']
        if s % 2:
            schedules += ['preset = "daily"', f'time = "{time_of_day}"', 'sql_file = "sql/daily.sql"']
            schedules += [f'snowflake = {{ table = "T_{s:04d}", key_columns = ["campaign_id"] }}']
        else:
            schedules += [
                f'cron = "{int(time_of_day[-2:])} 6 * * 1-5"',
                f'workflow_id = "wf_{s}"',
                'parameters = { brand = "acme" }',
            ]
        schedules.append("")
    (root / "schedules.toml").write_text("\n".join(schedules))
    return root


async def _timed(label: str, figures: dict[str, Any], coroutine: Any) -> Any:
    started = time.perf_counter()
    result = await coroutine
    figures[f"{label}_seconds"] = round(time.perf_counter() - started, 3)
    return result


async def _run(admin_dsn: str, directory: Path) -> dict[str, Any]:
    dsn = await recreate_database(admin_dsn, "recomamp_bench_fleet")
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    figures: dict[str, Any] = {"schedules": SCHEDULES, "users": USERS, "instances": USERS * INSTANCES_PER_USER}
    try:
        await migrations.migrate_up(connection)
        box = SecretBox([SecretStr(Fernet.generate_key().decode())])
        secret = directory / "snowflake.pw"
        secret.write_text("bench-password\n")
        root = write_fleet(directory / "fleet", secret, time_of_day="06:00")
        started = time.perf_counter()
        loaded = fleet.load(root)
        figures["validate_seconds"] = round(time.perf_counter() - started, 3)

        async def plan() -> fleet.PlanResult:
            return await fleet.plan(connection, loaded, box=box, now=_now(), prune=True)

        async def apply() -> fleet.ApplyResult:
            return await fleet.apply(connection, loaded, box=box, now=_now(), prune=True, operator="bench")

        created = await _timed("plan_create", figures, plan())
        figures["plan_create_changes"] = len(created.changes)
        applied = await _timed("apply_create", figures, apply())
        figures["apply_create_changes"] = len(applied.plan.changes)
        figures["stored_schedules"] = await connection.fetchval("SELECT count(*) FROM workflow_schedules")
        same = await _timed("plan_unchanged", figures, plan())
        figures["plan_unchanged_changes"] = len(same.changes)
        await _timed("apply_unchanged", figures, apply())
        write_fleet(directory / "fleet", secret, time_of_day="07:30")
        loaded = fleet.load(root)
        edited = await _timed("plan_edit", figures, plan())
        figures["plan_edit_changes"] = len(edited.changes)
        applied = await _timed("apply_edit", figures, apply())
        figures["apply_edit_changes"] = len(applied.plan.changes)
        figures["refused"] = len(applied.plan.refused)
    finally:
        await connection.close()
    return figures


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def main() -> dict[str, Any]:
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="recomamp-bench-fleet-") as directory:
        admin_dsn = start_postgres(Path(directory) / "pg")
        return asyncio.run(_run(admin_dsn, Path(directory)))


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
