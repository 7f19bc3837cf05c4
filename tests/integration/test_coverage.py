"""Is my data complete and fresh? Coverage, `backfill --missing` and lateness against real Postgres, through
the CLI a person types; lateness end to end through a running daemon, a webhook receiver and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.domain.models import ScheduleCreatePreset
from recomamp.sandbox.embedded import free_port
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services import schedules
from tests.conftest import ConfigWriter
from tests.integration.test_cli import cli
from tests.integration.test_notifications import Receiver, with_webhook
from tests.integration.test_observability import finished, get, samples, seed_two_users, serving
from tests.integration.world import add_due_schedule, add_tenant, wait_until, write_world_config

CREATED = datetime(2026, 9, 28, 12, tzinfo=UTC)
FIRST, LAST = date(2026, 10, 1), date(2026, 10, 30)


@pytest.fixture
def config_path(db_dsn: str, write_config: ConfigWriter) -> Path:
    return write_config(dsn=db_dsn)


def _day(d: int) -> datetime:
    return datetime(2026, 10, d, tzinfo=UTC)


async def daily_with_history(db: asyncpg.Connection) -> int:
    """A daily 06:00 UTC schedule (two days of data lag) with 30 windows of mixed history, Oct 1-30:
    1-10 loaded, 11 failed, 12 loaded, 13 skipped by a coalesced misfire, 14-20 never run (paused a week),
    21 failed then loaded, 22-26 loaded, 27 cancelled, 28 running, 29 waiting for quota, 30 loaded."""
    await db.execute("INSERT INTO users (email) VALUES ('ada@example.com')")
    await db.execute(
        "INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id) VALUES (1, 'amc1', 'E', 'M')"
    )
    schedule = ScheduleCreatePreset(
        name="ada daily",
        user_email="ada@example.com",
        instance_id="amc1",
        sql_query="SELECT 1",
        preset="daily",
        time_of_day="06:00",
        timezone="UTC",
        data_lag_days=2,
    )
    schedule_id = await schedules.create(db, schedule, CREATED)
    await db.execute("UPDATE workflow_schedules SET created_at = $2 WHERE id = $1", schedule_id, CREATED)

    async def run(d: int, status: str, trigger: str = "schedule", **fields: Any) -> None:
        start = _day(d)
        columns = {
            "schedule_id": schedule_id,
            "instance_id": 1,
            "scheduled_for": start + timedelta(days=3, hours=6),
            "trigger": trigger,
            "status": status,
            "window_start": start,
            "window_end": start + timedelta(days=1),
            "window_timezone": "UTC",
            **fields,
        }
        if status == "succeeded":
            columns.setdefault("snowflake_rows", 100 + d)
            columns.setdefault("finished_at", start + timedelta(days=3, hours=6, minutes=5))
        names = ", ".join(columns)
        values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        await db.execute(f"INSERT INTO schedule_runs ({names}) VALUES ({values})", *columns.values())

    for d in [*range(1, 11), 12, *range(22, 27), 30]:
        await run(d, "succeeded")
    await run(11, "failed", error_kind="amc_query_failed")
    await run(13, "skipped")
    await run(21, "failed", error_kind="snowflake_unreachable")
    await run(21, "succeeded", trigger="manual")
    await run(27, "cancelled", trigger="manual", error_kind="cancelled")
    await run(28, "running", trigger="manual")
    await run(29, "pending", trigger="manual", wait_reason="amc_quota")
    return schedule_id


async def coverage_json(config_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert await cli(config_path, *argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


async def test_coverage_gives_each_window_its_state_as_json_and_as_a_calendar(
    db: asyncpg.Connection, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule_id = await daily_with_history(db)
    shown = await coverage_json(
        config_path, capsys, "schedules", "coverage", str(schedule_id), "--since", "2026-10-01", "--until", "2026-10-30"
    )
    states = {w["window_start"]: w["state"] for w in shown["windows"]}
    assert len(states) == 30
    expected = {
        **{f"2026-10-{d:02d}": "loaded" for d in [*range(1, 11), 12, *range(21, 27), 30]},
        "2026-10-11": "failed",
        "2026-10-13": "skipped",
        **{f"2026-10-{d:02d}": "never_run" for d in range(14, 21)},
        "2026-10-27": "cancelled",
        "2026-10-28": "running",
        "2026-10-29": "waiting_quota",
    }
    assert states == expected
    assert shown["counts"] == {
        "loaded": 18,
        "failed": 1,
        "running": 1,
        "queued": 0,
        "waiting_quota": 1,
        "cancelled": 1,
        "skipped": 1,
        "never_run": 7,
    }
    assert shown["missing"] == 10
    by_start = {w["window_start"]: w for w in shown["windows"]}
    assert by_start["2026-10-05"]["rows"] == 105
    assert by_start["2026-10-05"]["loaded_at"] == "2026-10-08T06:05:00Z"
    assert by_start["2026-10-11"]["error_kind"] == "amc_query_failed"
    assert by_start["2026-10-21"]["runs"] == 2
    assert shown["newest_loaded"]["window_start"] == "2026-10-30"
    # The whole history is months old: the schedule is late, and says since when newer data was due.
    assert shown["freshness"]["late"] is True
    assert shown["freshness"]["deadline"] == "2026-11-03T12:00:00Z"  # the fire of [Oct 31, Nov 1) + 6 h

    # Without --since, coverage starts at the schedule's first window (or the oldest run's, if older).
    default = await coverage_json(config_path, capsys, "schedules", "coverage", str(schedule_id))
    # The window of its first fire after creation: Sep 29 06:00 loads [Sep 26, Sep 27).
    assert default["since"] == "2026-09-26"

    # On a pipe (not a terminal), plain letters and a legend.
    capsys.readouterr()
    argv = ["schedules", "coverage", str(schedule_id), "--since", "2026-10-01", "--until", "2026-10-30"]
    assert await cli(config_path, *argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "\x1b[" not in "\n".join(lines)
    start = lines.index("week of     Mo Tu We Th Fr Sa Su")
    assert lines[start : start + 7] == [
        "week of     Mo Tu We Th Fr Sa Su",
        "2026-09-28           L  L  L  L",
        "2026-10-05  L  L  L  L  L  L  F",
        "2026-10-12  L  S  -  -  -  -  -",
        "2026-10-19  -  -  L  L  L  L  L",
        "2026-10-26  L  C  R  W  L",
        "legend: L loaded  F failed  R running  Q queued  W waiting for AMC quota  C cancelled  "
        "S skipped (misfire)  - never run",
    ]
    assert (
        "30 windows: 18 loaded, 1 failed, 1 running, 1 waiting for AMC quota, 1 cancelled, 1 skipped (misfire), "
        "7 never run" in lines
    )


async def test_coverage_refuses_a_bad_range_and_an_unknown_schedule(
    db: asyncpg.Connection, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule_id = await daily_with_history(db)
    capsys.readouterr()
    argv = ["schedules", "coverage", str(schedule_id), "--since", "2026-10-30", "--until", "2026-10-01"]
    assert await cli(config_path, *argv) == 2
    assert "--until 2026-10-01 is before --since 2026-10-30" in capsys.readouterr().err
    assert await cli(config_path, "schedules", "coverage", "999") == 2
    assert "no schedule 999" in capsys.readouterr().err
    assert await cli(config_path, "schedules", "coverage", str(schedule_id), "--since", "yesterday") == 2
    assert "is not a date; use YYYY-MM-DD" in capsys.readouterr().err


async def test_backfill_missing_runs_exactly_the_missing_and_failed_windows_and_nothing_twice(
    db: asyncpg.Connection, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule_id = await daily_with_history(db)
    before = await db.fetchval("SELECT count(*) FROM schedule_runs")
    argv = ["schedules", "backfill", str(schedule_id), "--missing", "--since", "2026-10-01", "--until", "2026-10-30"]
    missing = [f"2026-10-{d:02d}" for d in [11, 13, *range(14, 21), 27]]

    dry = await coverage_json(config_path, capsys, *argv, "--dry-run")
    assert [w["window_start"] for w in dry["windows"]] == missing
    assert {w["state"] for w in dry["windows"]} == {"new"}
    assert dry["created"] == []
    assert await db.fetchval("SELECT count(*) FROM schedule_runs") == before  # a dry run writes nothing

    done = await coverage_json(config_path, capsys, *argv)
    assert len(done["created"]) == 10
    created = await db.fetch(
        "SELECT window_start, trigger, status, priority FROM schedule_runs WHERE id = ANY($1::bigint[]) "
        "ORDER BY window_start",
        done["created"],
    )
    assert [r["window_start"].date().isoformat() for r in created] == missing
    assert {(r["trigger"], r["status"], r["priority"]) for r in created} == {("backfill", "pending", 10)}
    # Each window has at most one active run still (the database's own rule held).
    assert (
        await db.fetchval(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM schedule_runs WHERE status IN ('pending', 'running') "
            "GROUP BY window_start) c"
        )
        == 1
    )

    again = await coverage_json(config_path, capsys, *argv)
    assert again["created"] == []
    assert await db.fetchval("SELECT count(*) FROM schedule_runs") == before + 10

    # The plain table, and one clear error for flags that do not go together.
    capsys.readouterr()
    assert await cli(config_path, *argv, "--dry-run") == 0
    assert "would create 0 backfill run(s)" in capsys.readouterr().out
    assert await cli(config_path, "schedules", "backfill", str(schedule_id), "--missing", "--from", "2026-10-01") == 2
    assert "--since/--until, not --from/--to" in capsys.readouterr().err
    assert await cli(config_path, "schedules", "backfill", str(schedule_id), "--since", "2026-10-01") == 2
    assert "--since/--until go with --missing" in capsys.readouterr().err


async def test_coverage_of_a_users_schedules_one_line_each(
    db: asyncpg.Connection, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule_id = await daily_with_history(db)
    lines = await coverage_json(config_path, capsys, "coverage", "--user=ADA@example.com", "--since", "2026-10-01")
    assert len(lines) == 1
    line = lines[0]
    assert line["schedule_id"] == schedule_id
    # Since Oct 1 up to today: the 30 windows above plus every window since, never run.
    assert line["counts"]["loaded"] == 18 and line["counts"]["failed"] == 1
    assert line["missing"] == line["counts"]["never_run"] + 3  # + failed, skipped, cancelled
    assert line["newest_loaded"] == {"window_start": "2026-10-30", "window_end": "2026-10-31", "timezone": "UTC"}
    assert line["freshness"]["late"] is True
    capsys.readouterr()
    assert await cli(config_path, "coverage", "--user=ada@example.com") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "NAME", "STATE", "RANGE", "LOADED", "MISSING", "FAILED", "NEWEST", "LOADED"]
    assert out[1].split()[:3] == [str(schedule_id), "ada", "daily"]
    assert "LATE" in out[1] and "[2026-10-30, 2026-10-31) UTC" in out[1]
    assert await cli(config_path, "coverage", "--user=nobody@example.com") == 2
    assert "no user nobody@example.com" in capsys.readouterr().err


async def test_a_late_schedule_alerts_once_and_recovers_once_after_its_next_load(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receiver = Receiver()
    await receiver.start()
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amc1")
    schedule_id = await add_due_schedule(pool, tenant, "ada daily")
    # Made late: created a month ago, never loaded, and not due again until next week.
    await pool.execute(
        "UPDATE workflow_schedules SET created_at = now() - interval '30 days', "
        "next_run_at = now() + interval '7 days' WHERE id = $1",
        schedule_id,
    )
    port = free_port()
    monkeypatch.setenv("RECOMAMP_METRICS__LISTEN", f"127.0.0.1:{port}")
    monkeypatch.setenv("RECOMAMP_METRICS__REFRESH_SECONDS", "0.2")
    config_path = with_webhook(write_world_config(write_config, db_dsn, simulator), receiver)
    daemon = wiring.daemon(load_config(config_path), config_path=config_path)
    task = asyncio.create_task(daemon.run())
    key = (("schedule_id", str(schedule_id)),)

    async def gauges() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with contextlib.suppress(aiohttp.ClientError):
            return samples((await get(f"http://127.0.0.1:{port}/metrics"))[1])
        return {}

    try:
        await wait_until(lambda: len(receiver.events("schedule_late")) == 1, what="one schedule_late alert")
        late = receiver.events("schedule_late")[0]
        assert late["schedule_id"] == schedule_id
        assert late["command"] == f"recomamp schedules coverage {schedule_id}"
        assert late["newest_window_end"] is None

        async def metrics_say_late() -> bool:
            found = await gauges()
            return found.get(("recomamp_schedule_late", key)) == 1.0 and found.get(("recomamp_schedules_late", ())) == 1

        await wait_until(metrics_say_late, what="the lateness gauges")
        found = await gauges()
        # Fired daily for 30 days, never run: each window fired in the last 14 days is missing.
        assert found[("recomamp_schedule_missing_windows", key)] == 14.0
        assert ("recomamp_schedule_newest_window_end_timestamp_seconds", key) not in found  # nothing loaded

        capsys.readouterr()
        assert await cli(config_path, "status", "--json") == 1
        shown = json.loads(capsys.readouterr().out)
        assert [s["id"] for s in shown["late_schedules"]] == [schedule_id]
        assert any(f"`recomamp schedules coverage {schedule_id}`" in line for line in shown["attention"])

        # Its next load: due now; the run loads today's window and ends the episode.
        await pool.execute(
            "UPDATE workflow_schedules SET next_run_at = now() - interval '1 minute' WHERE id = $1", schedule_id
        )
        await wait_until(lambda: len(receiver.events("schedule_recovered")) == 1, what="one schedule_recovered alert")
        recovered = receiver.events("schedule_recovered")[0]
        newest = await pool.fetchval(
            "SELECT max(window_end) FROM schedule_runs WHERE schedule_id = $1 AND status = 'succeeded'", schedule_id
        )
        assert recovered["newest_window_end"] == newest.isoformat()

        async def metrics_say_fresh() -> bool:
            found = await gauges()
            return found.get(("recomamp_schedule_late", key)) == 0.0 and found.get(("recomamp_schedules_late", ())) == 0

        await wait_until(metrics_say_fresh, what="the gauges to say fresh")
        found = await gauges()
        assert found[("recomamp_schedule_newest_window_end_timestamp_seconds", key)] == newest.timestamp()
        assert found[("recomamp_schedule_missing_windows", key)] == 13.0  # today's window loaded
        await asyncio.sleep(1.0)  # five more refreshes: no second alert of either kind
        assert (len(receiver.events("schedule_late")), len(receiver.events("schedule_recovered"))) == (1, 1)
        assert await pool.fetchval("SELECT late_since FROM workflow_schedules WHERE id = $1", schedule_id) is None
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
        await receiver.stop()


DASHBOARD = Path(__file__).resolve().parents[2] / "systemd" / "prometheus" / "recomamp-dashboard.json"
METRIC_NAME = re.compile(r"\brecomamp_[a-z_]+\b")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "recomamp" and dashboard["panels"]
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    # promtool parses each expression as a recording rule's: a typo, a bad selector or function fails it.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:e{n}", "expr": e} for n, e in enumerate(expressions)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in checked.stdout
    # And the check does catch a broken one.
    path.write_text(json.dumps({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (a (b)"}]}]}))
    assert subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, check=False).returncode != 0


async def test_every_metric_the_dashboard_names_is_exported_by_a_running_daemon(
    db_dsn: str, simulator: AmcSimulator, box: SecretBox, write_config: ConfigWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = {name for expression in dashboard_expressions() for name in METRIC_NAME.findall(expression)}
    await seed_two_users(db_dsn, box, simulator)  # one run succeeds, one fails
    async with serving(db_dsn, simulator, write_config, monkeypatch) as (_, base, _path):

        async def both_finished() -> bool:
            return len(await finished(db_dsn)) == 2

        await wait_until(both_finished, what="a healthy and a failing run to finish")
        await asyncio.sleep(0.5)  # a gauge refresh after them
        text = (await get(f"{base}/metrics"))[1]
    exported: set[str] = set()
    for family in text_string_to_metric_families(text):
        exported.update(sample.name for sample in family.samples)
        # A labelled metric with no series yet (no webhook delivered here) is declared by its HELP and TYPE.
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        exported.update(family.name + suffix for suffix in suffixes)
    assert "recomamp_no_such_metric" not in exported
    assert named - exported == set(), f"the dashboard names metrics /metrics does not export: {named - exported}"
    # The freshness panels' series are there with a schedule each (two schedules, one loaded).
    assert {"recomamp_schedule_late", "recomamp_schedule_missing_windows", "recomamp_schedules_late"} <= exported


async def test_two_replicas_checking_at_once_write_one_late_event_and_one_recovered(db_dsn: str) -> None:
    from recomamp.services.coverage import refresh_freshness
    from recomamp.store.db import init_connection

    first, second = await asyncpg.connect(db_dsn), await asyncpg.connect(db_dsn)
    for connection in (first, second):
        await init_connection(connection)
    try:
        schedule_id = await daily_with_history(first)  # newest loaded window Oct 30: late since Nov 3 12:00
        now = datetime(2026, 11, 20, tzinfo=UTC)
        fleets = await asyncio.gather(refresh_freshness(first, now), refresh_freshness(second, now))
        assert sorted(len(f.became_late) for f in fleets) == [0, 1]
        assert all(f.late == 1 for f in fleets)  # both export the same gauges
        events = await first.fetch("SELECT event, subject, payload FROM notifications ORDER BY id")
        assert [(e["event"], e["subject"]) for e in events] == [("schedule_late", f"schedule:{schedule_id}")]
        assert events[0]["payload"]["newest_window_end"] == "2026-10-31T00:00:00+00:00"
        assert "recomamp schedules backfill" in events[0]["payload"]["text"]
        again = await refresh_freshness(first, now + timedelta(minutes=1))
        assert again.became_late == [] and await first.fetchval("SELECT count(*) FROM notifications") == 1

        # A newer window loads (Nov 16, fired Nov 18): fresh again, one schedule_recovered.
        await first.execute(
            "INSERT INTO schedule_runs (schedule_id, instance_id, scheduled_for, status, window_start, window_end) "
            "VALUES ($1, 1, $2, 'succeeded', $3, $4)",
            schedule_id,
            datetime(2026, 11, 18, 6, tzinfo=UTC),
            datetime(2026, 11, 16, tzinfo=UTC),
            datetime(2026, 11, 17, tzinfo=UTC),
        )
        fleets = await asyncio.gather(refresh_freshness(first, now), refresh_freshness(second, now))
        assert sorted(len(f.recovered) for f in fleets) == [0, 1]
        events = await first.fetch("SELECT event, payload FROM notifications ORDER BY id")
        assert [e["event"] for e in events] == ["schedule_late", "schedule_recovered"]
        assert events[1]["payload"]["late_since"] == "2026-11-20T00:00:00+00:00"
        # A paused schedule is not checked: it is expected not to load (status lists it as paused).
        await first.execute("UPDATE workflow_schedules SET is_active = FALSE WHERE id = $1", schedule_id)
        assert (await refresh_freshness(first, now + timedelta(days=30))).schedules == []
    finally:
        await first.close()
        await second.close()


async def test_a_schedule_of_its_own_grace_is_late_later(
    db: asyncpg.Connection, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule_id = await daily_with_history(db)
    assert await cli(config_path, "schedules", "grace", str(schedule_id), "48") == 0
    assert await db.fetchval("SELECT freshness_grace_seconds FROM workflow_schedules WHERE id = $1", schedule_id) == (
        48 * 3600
    )
    shown = await coverage_json(config_path, capsys, "schedules", "coverage", str(schedule_id), "--since", "2026-10-30")
    assert shown["freshness"]["deadline"] == "2026-11-05T06:00:00Z"  # the fire of Nov 3 06:00 + 48 h
    assert await cli(config_path, "schedules", "grace", str(schedule_id), "default") == 0
    assert (
        await db.fetchval("SELECT freshness_grace_seconds FROM workflow_schedules WHERE id = $1", schedule_id) is None
    )
    capsys.readouterr()
    assert await cli(config_path, "schedules", "grace", str(schedule_id), "-1") == 2
    assert "out of range; use 0 to 744 hours, or 'default'" in capsys.readouterr().err
    assert await cli(config_path, "schedules", "grace", "999", "6") == 2
    assert "no schedule 999" in capsys.readouterr().err
