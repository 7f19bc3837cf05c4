"""Coverage benchmark: `schedules coverage` of a daily schedule with 3 years of windows (and runs), and
`coverage --user` of a user with 1,000 schedules (400 days of runs each, cadences spread over 48 times of
day and 4 timezones, so that few share a grid), through the services the CLI calls and through the CLI
itself (a process each, as a person types it). Then the daemon's freshness check over the same 1,001
schedules, and how many series it adds per schedule.

Baseline, in the same run: reading the 3 years of runs alone (the query without the grid), the floor of what
coverage can cost.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet

from recomamp.logs import configure_logging
from recomamp.observe.metrics import Metrics
from recomamp.sandbox.embedded import recreate_database, start_postgres
from recomamp.services import coverage
from recomamp.store import migrations

SCHEDULES = 1000
YEARS_OF_DAYS = 3 * 365
HISTORY_DAYS = 400
ZONES = ("UTC", "America/New_York", "Europe/London", "Asia/Tokyo")

# Every schedule loads a window per day, but one day in 20 failed and one in 50 was never run.
RUNS = """
INSERT INTO schedule_runs (schedule_id, instance_id, scheduled_for, trigger, status, window_start, window_end,
                           window_timezone, snowflake_rows, finished_at, error_kind)
SELECT s.id, s.instance_id, d + interval '14 days 6 hours', 'schedule',
       CASE WHEN n % 20 = 7 THEN 'failed' ELSE 'succeeded' END,
       d, d + interval '1 day', 'UTC', 1000 + n, d + interval '14 days 6 hours 5 minutes',
       CASE WHEN n % 20 = 7 THEN 'amc_query_failed' END
FROM workflow_schedules s,
     LATERAL generate_series(1, $2::int) n,
     LATERAL (SELECT (date_trunc('day', now()) - make_interval(days => n + 14)) AS d) day
WHERE s.owner_id = $1 AND n % 50 <> 3
"""


async def _seed(dsn: str) -> tuple[int, str]:
    connection = await asyncpg.connect(dsn)
    try:
        await migrations.migrate_up(connection)
        await connection.execute(
            "INSERT INTO users (email) VALUES ('history@example.com'), ('fleet@example.com');"
            "INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id) "
            "VALUES (1, 'amc-h', 'E', 'M'), (2, 'amc-f', 'E', 'M')"
        )
        schedule_id = await connection.fetchval(
            "INSERT INTO workflow_schedules (name, owner_id, instance_id, sql_query, preset, time_of_day, timezone, "
            "next_run_at, created_at) VALUES ('three years', 1, 1, 'SELECT 1', 'daily', '06:00', 'UTC', "
            "now() + interval '1 day', now() - interval '3 years') RETURNING id"
        )
        await connection.execute(
            "INSERT INTO workflow_schedules (name, owner_id, instance_id, sql_query, preset, time_of_day, timezone, "
            "next_run_at, created_at) "
            "SELECT 'fleet ' || g, 2, 2, 'SELECT 1', 'daily', make_time(g % 24, (g / 24) % 2 * 30, 0), "
            "($2::text[])[1 + g % 4], now() + interval '1 day', now() - interval '400 days' "
            "FROM generate_series(1, $1::int) g",
            SCHEDULES,
            list(ZONES),
        )
        await connection.execute(RUNS, 1, YEARS_OF_DAYS)
        await connection.execute(RUNS, 2, HISTORY_DAYS)
        await connection.execute("ANALYZE")
        runs = await connection.fetchval("SELECT count(*) FROM schedule_runs")
    finally:
        await connection.close()
    return int(schedule_id), f"{runs:,}"


def _timed(passes: int, call: Any) -> tuple[float, Any]:
    seconds, result = [], None
    for _ in range(passes):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


async def _services(dsn: str, schedule_id: int, passes: int) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    now = datetime.now(UTC)
    results: dict[str, Any] = {}
    try:

        async def timed(name: str, make: Any) -> Any:
            seconds: list[float] = []
            value = None
            for _ in range(passes):
                started = time.perf_counter()
                value = await make()
                seconds.append(time.perf_counter() - started)
            results[f"{name}_seconds"] = round(statistics.median(seconds), 3)
            results[f"{name}_first_seconds"] = round(seconds[0], 3)  # before any cache of the grid is warm
            return value

        first = now - timedelta(days=YEARS_OF_DAYS + 30)
        await timed(
            "baseline_runs_query",
            lambda: connection.fetch(
                "SELECT * FROM schedule_runs WHERE schedule_id = $1 AND window_start >= $2", schedule_id, first
            ),
        )
        covered = await timed("schedule_coverage", lambda: coverage.schedule_coverage(connection, schedule_id, now))
        results["schedule_windows"] = len(covered.coverage.windows)
        results["schedule_counts"] = {k: v for k, v in covered.coverage.counts().items() if v}
        lines = await timed("user_coverage", lambda: coverage.user_coverage(connection, "fleet@example.com", now))
        results["user_schedules"] = len(lines)
        results["user_windows"] = sum(sum(line.counts.values()) for line in lines)
        fleet = await timed("refresh_freshness", lambda: coverage.refresh_freshness(connection, now))
        metrics = Metrics()
        metrics.set_freshness_gauges(fleet)
        text = metrics.exposition().decode()
        per_schedule = sum(
            1
            for line in text.splitlines()
            if line.startswith(("recomamp_schedule_late{", "recomamp_schedule_missing", "recomamp_schedule_newest"))
        )
        results["freshness_schedules"] = len(fleet.schedules)
        results["freshness_series_per_schedule"] = round(per_schedule / max(1, len(fleet.schedules)), 2)
        results["late"] = fleet.late
    finally:
        await connection.close()
    return results


def _cli(config: Path, *argv: str, passes: int) -> float:
    def run() -> None:
        subprocess.run(
            [sys.executable, "-m", "recomamp", *argv, "--config", str(config), "--json"],
            check=True,
            capture_output=True,
        )

    seconds, _ = _timed(passes, run)
    return round(seconds, 3)


def _config(directory: Path, dsn: str) -> Path:
    key, secret = directory / "token.key", directory / "client_secret"
    key.write_text(Fernet.generate_key().decode() + "\n")
    secret.write_text("bench-secret\n")
    path = directory / "recomamp.toml"
    path.write_text(
        f'[database]\ndsn = "{dsn}"\n[amazon]\nclient_id = "amzn1.application-oa2-client.bench"\n'
        f'client_secret_file = "{secret}"\n[security]\ntoken_key_file = "{key}"\n'
    )
    return path


def main(passes: int = 3) -> dict[str, Any]:
    configure_logging("warning")
    directory = Path(tempfile.mkdtemp(prefix="recomamp-bench-coverage-"))
    # Registered before the server starts, so it runs after pgserver's own stop at exit (atexit runs last in,
    # first out): removing the data directory under a running server would leave the server running.
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    admin_dsn = start_postgres(directory / "pg")
    dsn = asyncio.run(recreate_database(admin_dsn, "recomamp_bench_coverage"))
    schedule_id, runs = asyncio.run(_seed(dsn))
    result = asyncio.run(_services(dsn, schedule_id, passes))
    config = _config(directory, dsn)
    environment_backup = os.environ.pop("RECOMAMP_CONFIG", None)
    try:
        result["cli_schedule_coverage_seconds"] = _cli(config, "schedules", "coverage", str(schedule_id), passes=passes)
        result["cli_user_coverage_seconds"] = _cli(config, "coverage", "--user", "fleet@example.com", passes=passes)
        # The floor of any command: the interpreter and recomamp's imports, `recomamp --version`.
        started_floor = _timed(
            passes,
            lambda: subprocess.run([sys.executable, "-m", "recomamp", "--version"], check=True, capture_output=True),
        )
        result["cli_floor_seconds"] = round(started_floor[0], 3)
    finally:
        if environment_backup is not None:
            os.environ["RECOMAMP_CONFIG"] = environment_backup
    result["runs"] = runs
    result["passes"] = passes
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
