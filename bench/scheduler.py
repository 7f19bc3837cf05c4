"""Scheduler benchmark: 10,000 schedules due at one instant, through the real daemon with a pipeline
that does nothing but record its outcome. Reports runs created per second, the p99 lag from due to
started, and the plan of one poll over 100,000 schedules of which none is due.

Baseline, in the same run: a bare INSERT of 10,000 run rows through unnest, the floor of what
creating the runs can cost.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from cryptography.fernet import Fernet

from recomamp import wiring
from recomamp.config import Config, parse_config
from recomamp.domain.runs import OutcomeStatus, RunOutcome
from recomamp.logs import configure_logging
from recomamp.sandbox.embedded import recreate_database, start_postgres
from recomamp.services.adapters import Services
from recomamp.store import migrations
from recomamp.store.runs import RunLease, begin_attempt, finish_run
from recomamp.store.schedules import SELECT_DUE

DUE = 10_000
IDLE = 100_000


class NothingPipeline:
    """Begins its attempt (recording when its coroutine started), does nothing, records success: what is
    left is the scheduler's own cost. The lag is measured to the moment each run's coroutine began."""

    def __init__(self, services: Services, owner: str, config: Callable[[], Config], *, once: bool) -> None:
        self._services = services

    async def execute(self, lease: RunLease) -> RunOutcome:
        started_at = datetime.now(UTC)
        await begin_attempt(self._services.pool, lease, started_at)
        async with self._services.pool.acquire() as connection:
            await finish_run(connection, lease, status="succeeded", error_kind=None, error_message=None)
        return RunOutcome(lease.run_id, OutcomeStatus.SUCCEEDED)


async def _fresh_database(admin_dsn: str, name: str) -> str:
    dsn = await recreate_database(admin_dsn, name)
    connection = await asyncpg.connect(dsn)
    try:
        await migrations.migrate_up(connection)
        await connection.execute(
            "INSERT INTO users (email) VALUES ('bench@example.com');"
            "INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id) "
            "SELECT 1, 'amc' || g, 'E', 'M' FROM generate_series(1, 100) g;"
        )
    finally:
        await connection.close()
    return dsn


async def _add_schedules(dsn: str, count: int, due_at: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO workflow_schedules (name, owner_id, instance_id, sql_query, preset, time_of_day, timezone, "
            f"next_run_at) SELECT 's' || g, 1, 1 + g % 100, 'SELECT 1', 'daily', '06:00', 'America/New_York', {due_at} "
            f"FROM generate_series(1, {count}) g"
        )
        await connection.execute("ANALYZE workflow_schedules")
    finally:
        await connection.close()


def _config(dsn: str, key: str, *, production: bool = False) -> Config:
    daemon: dict[str, object] = {"replica_name": "bench"}
    if not production:  # throughput: everything due is claimed and started at once
        daemon |= {
            "poll_interval_seconds": 0.05,
            "claim_batch_size": 1000,
            "max_concurrent_runs": 10_000,
            "max_runs_per_instance": 10_000,
        }
    return parse_config(
        {
            "database": {"dsn": dsn},
            "amazon": {"client_id": "bench", "client_secret": "bench"},
            "security": {"token_keys": [key]},
            "daemon": daemon,
            "logging": {"level": "warning"},
        }
    )


DISPATCH_DUE = 500


async def _dispatch(admin_dsn: str) -> dict[str, object]:
    """500 schedules falling due at one instant while the daemon serves at the production defaults
    (poll_interval_seconds 15, max_concurrent_runs 20): the lag from due to each run's own first step."""
    dsn = await _fresh_database(admin_dsn, "recomamp_bench_dispatch")
    await _add_schedules(dsn, DISPATCH_DUE, "now() + interval '1 day'")
    config = _config(dsn, Fernet.generate_key().decode(), production=True)
    daemon = wiring.daemon(config, once=False, pipeline_factory=NothingPipeline)
    serving = asyncio.create_task(daemon.run())
    connection = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(3)  # the daemon is up and asleep: nothing is due for a day
        # All fall due 6 s from now, more than a poll's worth of nothing after the daemon last looked.
        due = await connection.fetchval(
            "UPDATE workflow_schedules SET next_run_at = date_trunc('second', now()) + interval '6 seconds' "
            "RETURNING next_run_at"
        )
        await connection.execute("NOTIFY recomamp_wakeup")  # what `schedules update` sends
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = await connection.fetchval("SELECT count(*) FROM schedule_runs WHERE status = 'succeeded'")
            if done >= DISPATCH_DUE:
                break
            await asyncio.sleep(0.25)
        stats = await connection.fetchrow(
            "SELECT count(*) AS runs, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - $1)) AS p99, "
            "percentile_cont(0.50) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - $1)) AS p50 "
            "FROM schedule_runs WHERE status = 'succeeded'",
            due,
        )
        assert stats is not None
    finally:
        await connection.close()
        daemon.request_stop()
        await serving
    return {
        "dispatch_runs": int(stats["runs"]),
        "dispatch_lag_p50_seconds": round(float(stats["p50"] or 0), 3),
        "dispatch_lag_p99_seconds": round(float(stats["p99"] or 0), 3),
        "dispatch_poll_interval_seconds": config.daemon.poll_interval_seconds,
        "dispatch_max_concurrent_runs": config.daemon.max_concurrent_runs,
    }


async def _baseline(dsn: str) -> float:
    connection = await asyncpg.connect(dsn)
    try:
        ids = [row["id"] for row in await connection.fetch("SELECT id FROM workflow_schedules ORDER BY id")]
        now = datetime.now(UTC)
        started = time.perf_counter()
        await connection.execute(
            "INSERT INTO schedule_runs (schedule_id, instance_id, scheduled_for) "
            "SELECT s, 1, $2 FROM unnest($1::bigint[]) s",
            ids,
            now,
        )
        elapsed = time.perf_counter() - started
        await connection.execute("DELETE FROM schedule_runs")
        return elapsed
    finally:
        await connection.close()


async def _run(admin_dsn: str) -> dict[str, object]:
    dsn = await _fresh_database(admin_dsn, "recomamp_bench_scheduler")
    await _add_schedules(dsn, DUE, "now() + interval '1 hour'")
    baseline = await _baseline(dsn)
    connection = await asyncpg.connect(dsn)
    await connection.execute("UPDATE workflow_schedules SET next_run_at = now()")
    await connection.close()
    daemon = wiring.daemon(_config(dsn, Fernet.generate_key().decode()), once=True, pipeline_factory=NothingPipeline)
    started = time.perf_counter()
    code = await daemon.run()
    total = time.perf_counter() - started
    connection = await asyncpg.connect(dsn)
    try:
        created_span = await connection.fetchval(
            "SELECT EXTRACT(EPOCH FROM max(created_at) - min(scheduled_for)) FROM schedule_runs"
        )
        stats = await connection.fetchrow(
            "SELECT count(*) AS runs, count(*) FILTER (WHERE status = 'succeeded') AS succeeded, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - scheduled_for)) AS p99, "
            "percentile_cont(0.50) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - scheduled_for)) AS p50 "
            "FROM schedule_runs"
        )
        assert stats is not None
        # One poll over many schedules, none due: the plan should be one index scan.
        await connection.execute("DELETE FROM schedule_runs")
        await connection.execute("DELETE FROM workflow_schedules")
    finally:
        await connection.close()
    await _add_schedules(dsn, IDLE, "now() + interval '1 day'")
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            plan_rows = await connection.fetch(
                "EXPLAIN (ANALYZE, COSTS OFF) " + SELECT_DUE,
                datetime.now(UTC),
                1000,
                datetime.min.replace(tzinfo=UTC),
                0,
            )
    finally:
        await connection.close()
    runs = int(stats["runs"])
    return {
        "exit_code": code,
        "runs": runs,
        "succeeded": int(stats["succeeded"]),
        "daemon_seconds": round(total, 3),
        "runs_created_per_second": round(runs / float(created_span), 1) if created_span else None,
        "runs_completed_per_second": round(runs / total, 1),
        "lag_p50_seconds": round(float(stats["p50"]), 3),
        "lag_p99_seconds": round(float(stats["p99"]), 3),
        "baseline_insert_seconds": round(baseline, 4),
        "create_vs_baseline": round(float(created_span) / baseline, 1) if created_span else None,
        "idle_poll_plan": [row[0] for row in plan_rows],
    }


def main(passes: int = 3) -> dict[str, object]:
    """The median of `passes` passes for each figure (this machine's noise is about ±0.2 s on the lag)."""
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="recomamp-bench-") as directory:
        admin_dsn = start_postgres(Path(directory) / "pg")
        results = [asyncio.run(_run(admin_dsn)) | asyncio.run(_dispatch(admin_dsn)) for _ in range(passes)]
    median: dict[str, object] = dict(results[-1])
    for key, value in results[-1].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            median[key] = statistics.median(float(r[key]) for r in results)  # type: ignore[arg-type]
    median["passes"] = passes
    return median


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
