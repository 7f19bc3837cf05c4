"""The daemon against the simulator in Amazon's published shape: uncertain POSTs end with exactly one execution
and a run that succeeds; an analyst's execution is never adopted; the daily ad-hoc quota is kept, and a run that
would exceed it waits; discovered instances are run on their own apiEndpoint."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.sandbox.simulator import AmcSimulator, Fault, Unconfirmed
from recomamp.services import schedules
from tests.conftest import ConfigWriter
from tests.integration.test_cli import cli
from tests.integration.world import add_due_schedule, add_tenant, wait_until, write_world_config

VARIANTS = [
    pytest.param(Unconfirmed(), id="published"),
    pytest.param(Unconfirmed(keeps_sql_comments=False, echoes_adhoc_workflow_id=False), id="nothing-echoed"),
]


async def one_run(pool: asyncpg.Pool) -> asyncpg.Record:
    rows = await pool.fetch("SELECT * FROM schedule_runs WHERE status <> 'skipped'")
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "fault",
    [Fault.created_but_504(), Fault.created_but_dropped(), Fault.dropped(), Fault.http(503)],
    ids=["504-after-creating", "dropped-after-creating", "dropped-before-amc", "503-before-amc"],
)
async def test_an_uncertain_post_ends_with_exactly_one_execution_and_a_run_that_succeeds(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    variant: Unconfirmed,
    fault: Fault,
) -> None:
    simulator.unconfirmed = variant
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcU")
    await add_due_schedule(pool, tenant, "uncertain")
    simulator.add_faults("create_execution", fault)
    assert await wiring.daemon(load_config(write_world_config(write_config, db_dsn, simulator)), once=True).run() == 0
    run = await one_run(pool)
    assert run["status"] == "succeeded"
    assert len(simulator.executions) == 1
    assert run["amc_execution_id"] in simulator.executions


async def test_a_console_execution_of_the_same_workflow_and_window_with_other_parameters_is_not_adopted(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcC")
    simulator.add_workflow("amcC", "wf", "SELECT 1")
    schedule_id = await add_due_schedule(pool, tenant, "saved")
    await pool.execute(
        "UPDATE workflow_schedules SET sql_query = NULL, workflow_id = 'wf', parameter_values = '{\"brand\": \"acme\"}'"
    )
    async with pool.acquire() as connection:
        queued = await schedules.run_now(connection, schedule_id, datetime.now(UTC))
    await pool.execute("UPDATE workflow_schedules SET next_run_at = now() + interval '1 day'")
    window = queued.window
    # An analyst runs the same saved workflow on the same window, for another brand, while our POST is lost.
    console = simulator.create_console_execution(
        "amcC",
        workflow_id="wf",
        window_start=window.start_local.strftime("%Y-%m-%dT%H:%M:%S"),
        window_end=window.end_local.strftime("%Y-%m-%dT%H:%M:%S"),
        timezone=window.timezone,
        parameter_values={"brand": "other"},
    )
    simulator.add_faults("create_execution", Fault.dropped())
    assert await wiring.daemon(load_config(write_world_config(write_config, db_dsn, simulator)), once=True).run() == 0
    run = await one_run(pool)
    assert run["status"] == "succeeded"
    assert run["amc_execution_id"] != console.execution_id
    assert simulator.executions[run["amc_execution_id"]].parameter_values == {"brand": "acme"}
    assert len(simulator.executions) == 2


@pytest.mark.parametrize("posted", [True, False], ids=["post-went-through", "post-never-left"])
async def test_a_replica_killed_between_the_marker_and_the_post_leaves_exactly_one_execution(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    posted: bool,
) -> None:
    from recomamp.amazon.client import AmcClient
    from recomamp.config import load_config as load
    from recomamp.services.load import amc_target, execution_request
    from recomamp.store.runs import load_run
    from recomamp.wiring import open_services

    tenant = await add_tenant(pool, box, simulator, "cy@example.com", "amcK")
    schedule_id = await add_due_schedule(pool, tenant, "killed")
    async with pool.acquire() as connection:
        run_id = (await schedules.run_now(connection, schedule_id, datetime.now(UTC))).run_id
    await pool.execute("UPDATE workflow_schedules SET next_run_at = now() + interval '1 day'")
    marker = f"recomamp-run{run_id}-deadbeef"
    # The dead replica persisted its marker, then was killed (kill -9) around its POST.
    await pool.execute(
        "UPDATE schedule_runs SET status = 'running', step = 'submitting', attempt = 1, attempt_step = 'token', "
        "submit_marker = $2, submit_started_at = now(), lease_owner = 'dead', lease_token = gen_random_uuid(), "
        "lease_worked = TRUE, lease_expires_at = now() - interval '1 second' WHERE id = $1",
        run_id,
        marker,
    )
    config = load(write_world_config(write_config, db_dsn, simulator))
    if posted:
        async with open_services(config, replica="dead") as services:
            run = await load_run(services.pool, run_id)
            assert run is not None
            from recomamp.services.load import UserTokenSource

            client: AmcClient = services.amc
            await client.executions.create(
                amc_target(run, config),
                UserTokenSource(services, run.owner_id),
                execution_request(run, config),
                marker=marker,
            )
    assert await wiring.daemon(config, once=True).run() == 0
    row = await pool.fetchrow("SELECT status, amc_execution_id FROM schedule_runs WHERE id = $1", run_id)
    assert row is not None and row["status"] == "succeeded"
    assert len(simulator.executions) == 1
    assert simulator.calls["create_execution"] == 1


async def test_thirty_five_schedules_on_one_instance_take_thirty_slots_and_five_wait_for_the_window_to_roll(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    # A "day", time-compressed; the simulator's own quota counts the same window. Long enough for 35 claims and
    # 30 POSTs on a loaded machine before the first slot frees: what is checked while the window is full.
    window = 10.0
    simulator.adhoc_quota = 30
    simulator.quota_window_seconds = window
    simulator.default_profile.files = 1
    simulator.default_profile.rows = 5
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcQ")
    for n in range(35):
        await add_due_schedule(pool, tenant, f"q{n}")
    config = load_config(
        write_world_config(
            write_config,
            db_dsn,
            simulator,
            amc={"adhoc_executions_per_day": 30, "quota_window_seconds": window},
            max_concurrent_runs=40,
            max_runs_per_instance=40,
        )
    )
    daemon = wiring.daemon(config)
    serving = asyncio.create_task(daemon.run())
    try:

        async def window_full() -> bool:
            # The 30 need only be submitted, not finished: the window fills with the POSTs.
            return len(simulator.executions) == 30 and await _count(pool, "wait_reason = 'amc_quota'", 5)

        await wait_until(window_full, seconds=60, what="30 POSTs in the first window and 5 runs waiting for it to roll")
        waiting = await pool.fetch("SELECT * FROM schedule_runs WHERE wait_reason = 'amc_quota'")
        assert len(waiting) == 5 and len(simulator.executions) == 30
        for run in waiting:
            assert (run["wait_reason"], run["attempt"]) == ("amc_quota", 0)  # waiting costs no attempt
            assert "Waiting for AMC's ad-hoc quota on instance amcQ: 30 of 30" in run["error_message"]
            assert "Next slot at" in run["error_message"] and "Nothing failed" in run["error_message"]
        await wait_until(
            lambda: _count(pool, "status = 'succeeded'", 35), seconds=90, what="all 35, the 5 after the roll"
        )
    finally:
        daemon.request_stop()
        assert await serving == 0
    assert await _count(pool, "status = 'failed'", 0)
    assert len(simulator.executions) == 35
    assert simulator.calls["quota_refusal"] == 0  # recomamp never sent AMC a POST it would refuse
    assert await pool.fetchval("SELECT count(*) FROM notifications WHERE event = 'quota_exhausted'") == 1


async def test_amcs_own_quota_refusal_makes_the_run_wait_never_fail(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    """Another tool used the instance's quota: our count had room, AMC says no. The run waits."""
    simulator.adhoc_quota = 0
    simulator.quota_refusal_status = 429
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcR")
    await add_due_schedule(pool, tenant, "refused")
    config = load_config(
        write_world_config(write_config, db_dsn, simulator, amc={"quota_refusal_backoff_seconds": 1.0})
    )
    daemon = wiring.daemon(config)
    serving = asyncio.create_task(daemon.run())
    try:
        await wait_until(lambda: _count(pool, "wait_reason = 'amc_quota'", 1), what="the run to wait")
        assert await pool.fetchval("SELECT count(*) FROM amc_quota_blocks") == 1
        simulator.adhoc_quota = 30  # the other tool's executions age out
        await wait_until(lambda: _count(pool, "status = 'succeeded'", 1), what="the run to succeed")
    finally:
        daemon.request_stop()
        assert await serving == 0
    assert simulator.calls["create_execution"] >= 2 and len(simulator.executions) == 1


async def _count(pool: asyncpg.Pool, where: str, expected: int) -> bool:
    return bool(await pool.fetchval(f"SELECT count(*) FROM schedule_runs WHERE {where}") == expected)


async def test_instances_discover_lists_and_adds_and_runs_use_the_instances_own_api_endpoint(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amc-seeded")
    port = simulator.base_url.rsplit(":", 1)[1]
    # The instance's apiEndpoint names the host differently from the region table ([amazon.amc_base_url]).
    simulator.add_instance("ada@example.com", "amc-found", account_id="ENT-F", api_endpoint=f"http://localhost:{port}")
    path = write_world_config(write_config, db_dsn, simulator)
    capsys.readouterr()
    assert await cli(path, "instances", "discover", "ada@example.com", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["instance_id"] for i in listed["instances"]] == ["amc-found"] and listed["added"] == 0
    assert await pool.fetchval("SELECT count(*) FROM amc_instances WHERE instance_id = 'amc-found'") == 0
    assert await cli(path, "instances", "discover", "ada@example.com", "--add") == 0
    stored = await pool.fetchrow("SELECT * FROM amc_instances WHERE instance_id = 'amc-found'")
    assert stored is not None and stored["api_endpoint"] == f"http://localhost:{port}"
    assert stored["advertiser_id"] == "ENT-F"
    schedule_id = await add_due_schedule(pool, tenant, "found")
    await pool.execute("UPDATE workflow_schedules SET instance_id = $2 WHERE id = $1", schedule_id, stored["id"])
    assert await wiring.daemon(load_config(path), once=True).run() == 0
    assert simulator.last_headers["create_execution"]["Host"] == f"localhost:{port}"
    assert simulator.executions_for("amc-found")
