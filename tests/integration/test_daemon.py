"""The daemon in-process, against Postgres, the simulator and fakesnow."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.daemon.process import Daemon
from recomamp.sandbox.embedded import FakeSnowflake
from recomamp.sandbox.simulator import AmcSimulator, Fault
from recomamp.services import schedules
from tests.conftest import ConfigWriter
from tests.integration.world import (
    add_due_schedule,
    add_snowflake,
    add_tenant,
    execution_submitted,
    wait_until,
    write_world_config,
)


async def runs(pool: asyncpg.Pool) -> list[dict[str, object]]:
    return [dict(row) for row in await pool.fetch("SELECT * FROM schedule_runs ORDER BY id")]


async def test_a_due_schedule_runs_end_to_end_into_snowflake(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
) -> None:
    database = f"DEMO_{uuid.uuid4().hex[:8].upper()}"
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcA")
    await add_snowflake(pool, box, tenant, fakesnow_server.host, fakesnow_server.port, database)
    schedule_id = await add_due_schedule(pool, tenant, "daily traffic", table="daily_traffic", overdue_days=3)
    config = load_config(write_world_config(write_config, db_dsn, simulator))

    assert await wiring.daemon(config, once=True).run() == 0

    rows = await runs(pool)
    (run,) = [r for r in rows if r["status"] != "skipped"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert run["status"] == "succeeded", run["error_message"]
    assert run["missed_fires_skipped"] == 3
    # The three windows the coalesced misfire passed over are in the history, each once, before the run's.
    assert len(skipped) == 3 and len({r["window_start"] for r in skipped}) == 3
    assert all(r["window_end"] <= run["window_start"] for r in skipped)  # type: ignore[operator]
    assert all("schedules backfill" in str(r["error_message"]) for r in skipped)
    assert run["step"] == "finished"
    assert run["snowflake_status"] == "completed"
    assert run["snowflake_rows"] == run["result_rows"] == 120
    assert run["snowflake_table"] == f"{database}.AMC.DAILY_TRAFFIC"
    assert run["amc_execution_id"] in simulator.executions
    assert all(run[f] is not None for f in ("started_at", "submitted_at", "amc_finished_at", "finished_at"))
    schedule = await pool.fetchrow(
        "SELECT next_run_at, consecutive_failures FROM workflow_schedules WHERE id = $1", schedule_id
    )
    assert schedule is not None and schedule["next_run_at"] > datetime.now(UTC)
    execution = simulator.executions[str(run["amc_execution_id"])]
    assert execution.window_timezone == "UTC"
    assert execution.window_end is not None


async def test_three_daemons_run_every_fire_exactly_once(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    simulator.default_profile.files = 1
    simulator.default_profile.rows = 5
    tenants = [await add_tenant(pool, box, simulator, f"user{i}@example.com", f"amc{i}") for i in range(5)]
    schedule_ids = [await add_due_schedule(pool, tenants[i % 5], f"s{i}") for i in range(500)]
    simulator.adhoc_quota = None  # this test is about claims; the quota has tests of its own
    path = write_world_config(
        write_config,
        db_dsn,
        simulator,
        amc={"adhoc_executions_per_day": 1000},
        max_concurrent_runs=30,
        max_runs_per_instance=10,
    )
    base = load_config(path)
    daemons = [
        wiring.daemon(
            base.model_copy(update={"daemon": base.daemon.model_copy(update={"replica_name": f"replica-{n}"})}),
            once=True,
        )
        for n in range(3)
    ]
    codes = await asyncio.gather(*(daemon.run() for daemon in daemons))
    # A replica may stop before the others are done; then the stragglers are finished by a last pass.
    if sum(d.tally.succeeded for d in daemons) < 500:
        codes.append(await wiring.daemon(base, once=True).run())
    assert set(codes) == {0}
    rows = await runs(pool)
    assert len(rows) == 500
    assert sorted(int(r["schedule_id"]) for r in rows) == sorted(schedule_ids)  # type: ignore[call-overload]
    assert {r["status"] for r in rows} == {"succeeded"}
    assert {r["attempt"] for r in rows} == {1}  # nobody ran a fire twice
    assert simulator.calls["create_execution"] == 500
    assert len(simulator.executions) == 500
    assert sum(d.tally.succeeded for d in daemons) >= 400  # the work was shared


async def test_a_revoked_user_fails_fast_and_the_schedule_auto_pauses(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    tenant = await add_tenant(pool, box, simulator, "bob@example.com", "amcB")
    simulator.revoke("bob@example.com")
    schedule_id = await add_due_schedule(pool, tenant, "bob daily")
    await pool.execute(
        "UPDATE workflow_schedules SET auto_pause_on_failure = TRUE, failure_threshold = 2, consecutive_failures = 1 "
        "WHERE id = $1",
        schedule_id,
    )
    config = load_config(write_world_config(write_config, db_dsn, simulator))
    assert await wiring.daemon(config, once=True).run() == 1
    (run,) = await runs(pool)
    assert run["status"] == "failed"
    assert run["error_kind"] == "reauth_required"
    assert str(run["error_message"]).startswith("User needs to re-authenticate via Amazon OAuth")
    schedule = await pool.fetchrow("SELECT is_active, paused_reason FROM workflow_schedules WHERE id = $1", schedule_id)
    assert schedule is not None
    assert schedule["is_active"] is False
    assert schedule["paused_reason"] == "auto-paused after 2 consecutive failures"
    assert simulator.calls["create_execution"] == 0


async def test_a_run_whose_lease_expired_is_adopted_and_polled_not_resubmitted(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    tenant = await add_tenant(pool, box, simulator, "cy@example.com", "amcC")
    schedule_id = await add_due_schedule(pool, tenant, "cy daily")
    config = load_config(write_world_config(write_config, db_dsn, simulator))
    async with pool.acquire() as connection:
        run_id = (await schedules.run_now(connection, schedule_id, datetime.now(UTC))).run_id
    await pool.execute(
        "UPDATE workflow_schedules SET next_run_at = now() + interval '1 day' WHERE id = $1", schedule_id
    )
    # A replica that died after its POST: execution id persisted, lease long expired.
    execution_id = await _submit_directly(simulator, tenant)
    await pool.execute(
        "UPDATE schedule_runs SET status = 'running', step = 'submitted', attempt = 1, amc_execution_id = $2, "
        "submit_marker = 'x', lease_owner = 'dead-replica', lease_token = gen_random_uuid(), lease_worked = TRUE, "
        "lease_expires_at = now() - interval '1 second' WHERE id = $1",
        run_id,
        execution_id,
    )
    posts_before = simulator.calls["create_execution"]
    assert await wiring.daemon(config, once=True).run() == 0
    (run,) = await runs(pool)
    # The dead replica had advanced it to submitted: adopting it there is progress, not a second attempt.
    assert (run["status"], run["attempt"], run["amc_execution_id"]) == ("succeeded", 1, execution_id)
    assert (run["claims"], run["interruptions"]) == (1, 1)
    assert simulator.calls["create_execution"] == posts_before


async def _submit_directly(simulator: AmcSimulator, tenant: object) -> str:
    import aiohttp

    from recomamp.amazon.client import AmcClient
    from recomamp.amazon.matching import ExecutionRequest
    from recomamp.amazon.transport import AmcRetryPolicy, AmcTarget

    async with aiohttp.ClientSession() as http:
        async with http.post(
            simulator.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": next(t for t, e in simulator.refresh_tokens.items() if e == "cy@example.com"),
                "client_id": simulator.client_id,
                "client_secret": simulator.client_secret,
            },
        ) as response:
            token = str((await response.json())["access_token"])

        async def tokens(stale: str | None = None) -> str:
            return token

        client = AmcClient(http, client_id=simulator.client_id, policy=AmcRetryPolicy(1, (0.0,), 0, 0.01, 0.01, 1, 5))
        execution = await client.executions.create(
            AmcTarget(simulator.base_url, "amcC", "ENT1", "ATVPDKIKX0DER"),
            tokens,
            ExecutionRequest(datetime(2026, 11, 1), datetime(2026, 11, 2), "UTC", sql_query="SELECT 1"),
            marker="x",
        )
    return execution.execution_id


async def test_a_transient_amc_outage_defers_the_run_in_the_long_running_daemon(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    tenant = await add_tenant(pool, box, simulator, "dee@example.com", "amcD")
    await add_due_schedule(pool, tenant, "dee daily")
    simulator.add_faults("get_execution", *[Fault.http(503)] * 5)
    config = load_config(
        write_world_config(write_config, db_dsn, simulator, run_retry_delay_seconds=0.3, max_run_attempts=3)
    )
    daemon = wiring.daemon(config)
    serving = asyncio.create_task(daemon.run())

    async def succeeded() -> bool:
        rows = await runs(pool)
        return bool(rows) and rows[0]["status"] == "succeeded"

    await wait_until(succeeded, what="the deferred run to succeed")
    daemon.request_stop()
    assert await serving == 0
    (run,) = await runs(pool)
    assert run["status"] == "succeeded"
    # Deferred once after it had advanced (queued to submitted), then claimed again at submitted: a claim
    # after progress is not counted again, so it is still its first attempt; the claims say what happened.
    assert (run["attempt"], run["claims"]) == (1, 2)
    assert simulator.calls["create_execution"] == 1


async def test_sighup_reload_applies_good_config_and_keeps_old_on_bad(
    pool: asyncpg.Pool, db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, tmp_path: Path
) -> None:
    path = write_world_config(write_config, db_dsn, simulator)
    daemon = wiring.daemon(load_config(path), config_path=path)
    serving = asyncio.create_task(daemon.run())
    await wait_until(lambda: daemon.ready, what="the daemon to be ready")  # a reload then swaps its services' config
    text = path.read_text()
    path.write_text(
        text.replace("poll_interval_seconds = 0.2", "poll_interval_seconds = 0.7").replace(
            'dsn = "', 'dsn = "postgresql://changed@h/db" \n#"'
        )
    )
    assert (await daemon.reload()).applied is True
    assert daemon.config.daemon.poll_interval_seconds == 0.7
    assert daemon.config.database.dsn.get_secret_value() == db_dsn  # restart-only: not half-applied
    path.write_text(text.replace("[daemon]", "[daemon]\nmax_concurrent_runs = -4"))
    assert (await daemon.reload()).applied is False
    assert daemon.config.daemon.poll_interval_seconds == 0.7
    daemon.request_stop()
    assert await serving == 0


async def test_recomamp_reload_over_the_control_socket_reports_the_verdict(
    pool: asyncpg.Pool, db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, tmp_path: Path
) -> None:
    """What `systemctl reload` runs (ExecReload=recomamp reload): exit 0 and the changed keys when applied;
    exit 1 with the daemon's problems when refused, the running config kept. It needs no credential."""
    socket_path = tmp_path / "run" / "control.sock"
    path = write_world_config(write_config, db_dsn, simulator, control_socket=str(socket_path))
    daemon = wiring.daemon(load_config(path), config_path=path)
    serving = asyncio.create_task(daemon.run())
    await wait_until(socket_path.exists, what="the control socket")
    assert oct(socket_path.stat().st_mode & 0o777) == "0o600"

    async def reload_cli(*extra: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recomamp", "reload", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ["PATH"], **(env or {})},  # no credentials, no config: like ExecReload= on 252
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    text = path.read_text()
    path.write_text(text.replace("poll_interval_seconds = 0.2", "poll_interval_seconds = 0.7"))
    code, out, err = await reload_cli(env={"RUNTIME_DIRECTORY": str(socket_path.parent)})
    assert (code, out.strip(), err) == (0, "reloaded: daemon.poll_interval_seconds", "")
    assert daemon.config.daemon.poll_interval_seconds == 0.7

    path.write_text(text.replace("[daemon]", "[daemon]\nmax_concurrent_runs = -4"))
    code, out, err = await reload_cli("--socket", str(socket_path))
    assert code == 1 and out == ""
    assert "refused" in err and "max_concurrent_runs" in err and "Traceback" not in err
    assert daemon.config.daemon.poll_interval_seconds == 0.7  # the old config stays in force

    code, _, err = await reload_cli("--socket", str(tmp_path / "nobody.sock"))
    assert code == 1 and "no daemon listens on" in err and len(err.strip().splitlines()) == 1
    daemon.request_stop()
    assert await serving == 0
    assert not socket_path.exists()


async def test_a_run_whose_lease_another_replica_took_is_stopped_here(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    simulator.default_profile.running_seconds = 60
    tenant = await add_tenant(pool, box, simulator, "eve@example.com", "amcE")
    await add_due_schedule(pool, tenant, "eve daily")
    config = load_config(
        write_world_config(write_config, db_dsn, simulator, heartbeat_interval_seconds=0.2, lease_seconds=5.0)
    )
    daemon = wiring.daemon(config)
    serving = asyncio.create_task(daemon.run())
    await wait_until(lambda: execution_submitted(pool), what="the run to be submitted")
    # Another replica adopted the run (say this one stalled past its lease): a claim mints a new token.
    await pool.execute(
        "UPDATE schedule_runs SET lease_owner = 'replica-b', lease_token = gen_random_uuid(), "
        "lease_expires_at = now() + interval '1 hour'"
    )
    # The heartbeat (every 0.2 s) finds the lease gone; generous, since only a hung test reaches the deadline.
    await wait_until(lambda: not daemon._runs, seconds=30, what="our copy of the run to be stopped")
    daemon.request_stop()
    assert await serving == 0
    row = await pool.fetchrow("SELECT status, lease_owner FROM schedule_runs")
    assert row is not None
    assert (row["status"], row["lease_owner"]) == ("running", "replica-b")  # untouched by the drain


async def test_a_run_claimed_too_often_without_an_outcome_gives_up(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    tenant = await add_tenant(pool, box, simulator, "fay@example.com", "amcF")
    schedule_id = await add_due_schedule(pool, tenant, "fay daily")
    config = load_config(write_world_config(write_config, db_dsn, simulator, max_run_attempts=3))
    async with pool.acquire() as connection:
        await schedules.run_now(connection, schedule_id, datetime.now(UTC))
    await pool.execute("UPDATE workflow_schedules SET next_run_at = now() + interval '1 day'")
    # Three replicas already died holding it, each at the same step (a poison run): the fourth claim must
    # not loop again.
    await pool.execute(
        "UPDATE schedule_runs SET status = 'running', step = 'token', attempt = 3, attempt_step = 'token', "
        "interruptions = 2, lease_token = gen_random_uuid(), lease_worked = TRUE, "
        "lease_expires_at = now() - interval '1 second'"
    )
    assert await wiring.daemon(config, once=True).run() == 1
    run = await pool.fetchrow("SELECT status, error_kind, error_message, attempt FROM schedule_runs")
    assert run is not None
    assert (run["status"], run["error_kind"], run["attempt"]) == ("failed", "too_many_attempts", 4)
    assert "max_run_attempts = 3" in run["error_message"]
    assert "3 of its claims ended mid-run" in run["error_message"] and "at step token" in run["error_message"]
    assert simulator.calls["lwa_token"] == 0


async def test_token_checks_are_logged_once_per_run_at_info(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from recomamp.logs import configure_logging

    tenant = await add_tenant(pool, box, simulator, "gus@example.com", "amcG")
    await add_due_schedule(pool, tenant, "gus daily")
    config = load_config(write_world_config(write_config, db_dsn, simulator))
    configure_logging("info")
    assert await wiring.daemon(config, once=True).run() == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    checks = [line for line in lines if line["event"] == "token_checked"]
    assert [c["token_status"] for c in checks] == ["missing"]  # then refreshed; later checks are debug
    assert checks[0]["run_id"] == 1 and checks[0]["user_email"] == "gus@example.com"


async def test_once_mode_asked_to_stop_drains_within_the_timeout(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    simulator.default_profile.running_seconds = 120
    tenant = await add_tenant(pool, box, simulator, "hal@example.com", "amcH")
    await add_due_schedule(pool, tenant, "hal daily")
    config = load_config(write_world_config(write_config, db_dsn, simulator, drain_timeout_seconds=0.3))
    daemon = wiring.daemon(config, once=True)
    running = asyncio.create_task(daemon.run())
    await wait_until(lambda: execution_submitted(pool), what="the run to be submitted")
    daemon.request_stop()
    await asyncio.wait_for(running, 30)  # a 0.3 s drain: well within this, and not the two minutes AMC would take
    row = await pool.fetchrow("SELECT status, step, lease_owner FROM schedule_runs")
    assert row is not None
    assert (row["status"], row["step"], row["lease_owner"]) == ("pending", "submitted", None)  # released: resumes there


async def test_a_drain_longer_than_the_lease_keeps_heartbeating_so_runs_finish_as_theirs(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
) -> None:
    """SIGTERM: stop claiming, keep the heartbeat while runs finish, then release, then stop the heartbeat. With
    a 1.5 s lease, 4 s of AMC left and another replica serving, a drain that stopped the heartbeat first would
    let that replica adopt every run (a second claim each)."""
    simulator.default_profile.running_seconds = 4
    tenant = await add_tenant(pool, box, simulator, "ida@example.com", "amcI")
    for n in range(3):
        await add_due_schedule(pool, tenant, f"ida {n}")

    def replica(name: str) -> Daemon:
        path = write_world_config(
            write_config, db_dsn, simulator, lease_seconds=1.5, drain_timeout_seconds=15.0, replica_name=name
        )
        return wiring.daemon(load_config(path))

    draining, other = replica("draining"), replica("other")
    first = asyncio.create_task(draining.run())
    await wait_until(lambda: execution_submitted(pool, 3), what="three runs to be submitted")
    second = asyncio.create_task(other.run())
    await wait_until(lambda: other.ready, what="the other replica to serve, ready to adopt what the drain lets go")
    draining.request_stop()
    assert await asyncio.wait_for(first, 30) == 0
    other.request_stop()
    assert await asyncio.wait_for(second, 30) == 0
    rows = await pool.fetch("SELECT status, claims, lease_owner FROM schedule_runs")
    assert [(r["status"], r["claims"]) for r in rows] == [("succeeded", 1)] * 3  # each finished by its one claim
