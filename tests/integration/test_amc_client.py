"""The AMC client against the simulator over real HTTP, with real token refreshes in Postgres."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from recomamp.amazon.amc import AmcClient, AmcError, AmcRetryPolicy, AmcTarget, Execution, ExecutionRequest
from recomamp.crypto import SecretBox
from recomamp.sandbox.simulator import RESULT_COLUMNS, AmcSimulator, Fault, expected_rows
from recomamp.tokens import TokenService
from tests.integration.conftest import add_user, make_token_service

POLICY = AmcRetryPolicy(
    max_attempts=4,
    waits=(0.0,),
    retry_after_cap_seconds=0.0,
    poll_initial_seconds=0.01,
    poll_max_seconds=0.02,
    poll_multiplier=1.5,
    request_timeout_seconds=5.0,
)
REQUEST = ExecutionRequest(
    window_start=datetime(2026, 11, 1),
    window_end=datetime(2026, 11, 8),
    timezone="America/New_York",
    sql_query="SELECT campaign_id, SUM(impressions) FROM sponsored_ads_traffic GROUP BY 1",
)


class UserTokens:
    def __init__(self, service: TokenService, user_id: int) -> None:
        self.service = service
        self.user_id = user_id

    async def __call__(self, stale: str | None = None) -> str:
        return await self.service.access_token(self.user_id, stale=stale)


@pytest.fixture
async def tokens(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> UserTokens:
    user_id = await add_user(pool, box, "ada@example.com", simulator.add_user("ada@example.com"))
    return UserTokens(make_token_service(pool, http, simulator, box), user_id)


@pytest.fixture
def amc(http: aiohttp.ClientSession, simulator: AmcSimulator) -> AmcClient:
    return AmcClient(http, client_id=simulator.client_id, policy=POLICY)


@pytest.fixture
def target(simulator: AmcSimulator) -> AmcTarget:
    return AmcTarget(simulator.base_url, "amcinst1", "ENTITY1", "ATVPDKIKX0DER")


def _rows(paths: list[Path]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for path in paths:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            assert tuple(next(reader)) == RESULT_COLUMNS
            rows.extend(tuple(row) for row in reader)
    return rows


async def test_run_poll_and_download_every_file(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, tmp_path: Path
) -> None:
    simulator.profile("amcinst1").running_seconds = 0.05
    execution = await amc.submit_once(
        target, tokens, REQUEST, marker="run-1", since=datetime.now(UTC), check_first=False
    )
    seen: list[str] = []

    async def on_status(e: Execution) -> None:
        seen.append(e.status)

    final = await amc.wait_until_terminal(target, tokens, execution.execution_id, on_status=on_status)
    assert final.status == "SUCCEEDED"
    assert seen[-1] == "SUCCEEDED" and "RUNNING" in seen
    sim_execution = simulator.executions[execution.execution_id]
    assert sim_execution.window_timezone == "America/New_York"
    assert sim_execution.window_start == "2026-11-01T00:00:00"
    assert sim_execution.sql_query is not None and sim_execution.sql_query.endswith("-- recomamp-run: run-1")
    paths = await amc.download_results(target, tokens, execution.execution_id, tmp_path)
    assert len(paths) == 3
    assert _rows(paths) == expected_rows(sim_execution)
    assert simulator.calls["download_urls"] == 2  # three links, two to a page


async def test_a_504_that_created_the_execution_leaves_exactly_one(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.add_faults("create_execution", Fault.created_but_504())
    execution = await amc.submit_once(
        target, tokens, REQUEST, marker="run-2", since=datetime.now(UTC), check_first=False
    )
    assert len(simulator.executions_for("amcinst1")) == 1
    assert execution.execution_id in simulator.executions
    assert simulator.calls["create_execution"] == 1
    assert simulator.calls["list_executions"] >= 1


async def test_a_504_that_created_nothing_is_submitted_again_once(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.add_faults("create_execution", Fault.http(504, {"message": "Endpoint request timed out"}))
    await amc.submit_once(target, tokens, REQUEST, marker="run-3", since=datetime.now(UTC), check_first=False)
    assert len(simulator.executions_for("amcinst1")) == 1
    assert simulator.calls["create_execution"] == 2


async def test_a_dropped_post_is_looked_up_before_a_new_one(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.add_faults("create_execution", Fault.dropped())
    await amc.submit_once(target, tokens, REQUEST, marker="run-4", since=datetime.now(UTC), check_first=False)
    assert len(simulator.executions_for("amcinst1")) == 1


async def test_a_resumed_submit_finds_the_earlier_execution_among_others(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    since = datetime.now(UTC)
    for marker in ("other-a", "other-b", "other-c", "run-5"):  # the match is on the second page of two
        await amc.create_execution(target, tokens, REQUEST, marker=marker)
    found = await amc.submit_once(target, tokens, REQUEST, marker="run-5", since=since, check_first=True)
    assert found.marker == "run-5"
    assert simulator.calls["create_execution"] == 4
    assert simulator.calls["list_executions"] >= 2


async def test_a_saved_workflow_is_matched_by_id_and_window(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.add_workflow("amcinst1", "wf-weekly", "SELECT 1")
    request = ExecutionRequest(
        window_start=REQUEST.window_start,
        window_end=REQUEST.window_end,
        timezone="UTC",
        workflow_id="wf-weekly",
        parameter_values={"brand": "acme"},
    )
    simulator.add_faults("create_execution", Fault.created_but_504())
    execution = await amc.submit_once(
        target, tokens, request, marker="run-6", since=datetime.now(UTC), check_first=False
    )
    assert len(simulator.executions_for("amcinst1")) == 1
    assert simulator.executions[execution.execution_id].parameter_values == {"brand": "acme"}


async def test_a_401_while_polling_refreshes_once_and_goes_on(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").running_seconds = 0.1
    execution = await amc.submit_once(target, tokens, REQUEST, marker="r", since=datetime.now(UTC), check_first=False)
    assert simulator.calls["lwa_token"] == 1

    async def expire_on_running(e: Execution) -> None:
        if e.status == "RUNNING":
            simulator.expire_access_tokens()

    final = await amc.wait_until_terminal(target, tokens, execution.execution_id, on_status=expire_on_running)
    assert final.status == "SUCCEEDED"
    assert simulator.calls["lwa_token"] == 2


async def test_an_expired_link_is_fetched_again(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, tmp_path: Path
) -> None:
    execution = await amc.submit_once(target, tokens, REQUEST, marker="r", since=datetime.now(UTC), check_first=False)
    simulator.link_ttl_seconds = -1  # every link handed out from now on is already expired
    calls_before = simulator.calls["download_urls"]

    async def restore_links() -> None:
        simulator.link_ttl_seconds = 600

    # The first batch of links is dead on arrival; the client must ask for fresh ones.
    original = amc.download_urls

    async def urls_then_restore(*args: object, **kwargs: object) -> list[str]:
        urls = await original(*args, **kwargs)  # type: ignore[arg-type]
        await restore_links()
        return urls

    amc.download_urls = urls_then_restore  # type: ignore[method-assign]
    paths = await amc.download_results(target, tokens, execution.execution_id, tmp_path)
    assert _rows(paths) == expected_rows(simulator.executions[execution.execution_id])
    assert simulator.calls["download_urls"] - calls_before == 4  # twice, two pages each
    assert simulator.calls["download_file"] == 4  # one 403, then three files


async def test_a_truncated_file_is_fetched_again_without_duplicates(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, tmp_path: Path
) -> None:
    simulator.profile("amcinst1").rows = 9000  # several chunks per file, so a cut lands mid-file
    execution = await amc.submit_once(target, tokens, REQUEST, marker="r", since=datetime.now(UTC), check_first=False)
    simulator.add_faults("download_file", Fault.truncated())
    paths = await amc.download_results(target, tokens, execution.execution_id, tmp_path)
    assert _rows(paths) == expected_rows(simulator.executions[execution.execution_id])
    assert simulator.calls["download_file"] == 4


async def test_throttled_and_failing_reads_are_retried(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    execution = await amc.submit_once(target, tokens, REQUEST, marker="r", since=datetime.now(UTC), check_first=False)
    simulator.add_faults("get_execution", Fault.throttled(retry_after=0), Fault.throttled(), Fault.http(502))
    assert (await amc.get_execution(target, tokens, execution.execution_id)).status == "SUCCEEDED"
    assert simulator.calls["get_execution"] == 4


async def test_a_failed_execution_carries_its_reason(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").fail_reason = "Column 'impresions' does not exist"
    execution = await amc.submit_once(target, tokens, REQUEST, marker="r", since=datetime.now(UTC), check_first=False)
    final = await amc.wait_until_terminal(target, tokens, execution.execution_id)
    assert (final.status, final.status_reason) == ("FAILED", "Column 'impresions' does not exist")


async def test_a_bad_request_is_permanent_with_amc_details(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    ancient = ExecutionRequest(
        window_start=datetime(2001, 1, 1), window_end=datetime(2001, 1, 2), timezone="UTC", sql_query="SELECT 1"
    )
    with pytest.raises(AmcError) as excinfo:
        await amc.submit_once(target, tokens, ancient, marker="r", since=datetime.now(UTC), check_first=False)
    assert excinfo.value.status == 400 and not excinfo.value.transient
    assert "before our stated retention period" in str(excinfo.value)
    assert simulator.calls["create_execution"] == 1


async def test_cancel_and_cancel_again(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").running_seconds = 60
    execution = await amc.create_execution(target, tokens, REQUEST, marker="r")
    assert (await amc.cancel_execution(target, tokens, execution.execution_id)).status == "CANCELLED"
    with pytest.raises(AmcError) as excinfo:
        await amc.cancel_execution(target, tokens, execution.execution_id)
    assert excinfo.value.status == 400


async def test_polling_stops_at_its_deadline(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").running_seconds = 3600
    execution = await amc.create_execution(target, tokens, REQUEST, marker="r")
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(AmcError, match="still RUNNING after 250 s of polling") as excinfo:
        await amc.wait_until_terminal(
            target, tokens, execution.execution_id, deadline_seconds=250, clock=lambda: float(next(ticks))
        )
    assert not excinfo.value.transient
