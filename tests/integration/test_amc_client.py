"""The AMC client against the simulator in its published shape (../shared/AMC_API.md), over real HTTP,
with real token refreshes in Postgres. Facts marked [unconfirmed] are played both ways."""

from __future__ import annotations

import asyncio
import csv
import errno
import gzip
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from recomamp.amazon import results
from recomamp.amazon.client import AmcClient
from recomamp.amazon.matching import ExecutionRequest
from recomamp.amazon.transport import AmcError, AmcRetryPolicy, AmcTarget, QuotaRefused, SubmitUncertain
from recomamp.crypto import SecretBox
from recomamp.sandbox.results_data import RESULT_COLUMNS, expected_rows
from recomamp.sandbox.simulator import AmcSimulator, Fault, Unconfirmed
from recomamp.services.tokens import TokenService
from recomamp.testing import capture_logs, loop_holds
from tests.integration.conftest import add_user, make_token_service

POLICY = AmcRetryPolicy(
    max_attempts=4,
    waits=(0.0,),
    retry_after_cap_seconds=0.0,
    poll_initial_seconds=0.01,
    poll_max_seconds=0.02,
    poll_multiplier=1.5,
    request_timeout_seconds=5.0,
    listing_lag_seconds=0.3,
)
SQL = "SELECT campaign_id, SUM(impressions) FROM sponsored_ads_traffic GROUP BY 1"
REQUEST = ExecutionRequest(
    window_start=datetime(2026, 11, 1),
    window_end=datetime(2026, 11, 8),
    timezone="America/New_York",
    sql_query=SQL,
)
SAVED = ExecutionRequest(
    window_start=datetime(2026, 11, 1),
    window_end=datetime(2026, 11, 8),
    timezone="America/New_York",
    workflow_id="wf-weekly",
    parameter_values={"brand": "acme"},
)
# Every way AMC might answer where the published material is silent.
VARIANTS = [
    pytest.param(Unconfirmed(), id="comments-kept,id-echoed"),
    pytest.param(Unconfirmed(keeps_sql_comments=False), id="comments-stripped,id-echoed"),
    pytest.param(Unconfirmed(echoes_adhoc_workflow_id=False), id="comments-kept,id-not-echoed"),
    pytest.param(
        Unconfirmed(keeps_sql_comments=False, echoes_adhoc_workflow_id=False, list_includes_sql=False),
        id="nothing-identifying-in-lists",
    ),
]


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
    simulator.add_workflow("amcinst1", "wf-weekly", "SELECT brand, COUNT(*) FROM t WHERE brand = {{brand}}")
    return AmcClient(http, client_id=simulator.client_id, policy=POLICY)


@pytest.fixture
def target(simulator: AmcSimulator) -> AmcTarget:
    return AmcTarget(simulator.base_url, "amcinst1", "ENTITY1", "ATVPDKIKX0DER")


def _rows(paths: tuple[Path, ...]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for path in paths:
        with gzip.open(path, "rt", newline="") as handle:
            reader = csv.reader(handle)
            assert tuple(next(reader)) == RESULT_COLUMNS  # every stored part starts with its header
            rows.extend(tuple(row) for row in reader)
    return rows


async def _submit(amc: AmcClient, target: AmcTarget, tokens: UserTokens, request: ExecutionRequest, marker: str) -> str:
    execution = await amc.executions.submit_once(
        target, tokens, request, marker=marker, since=datetime.now(UTC), check_first=False
    )
    return execution.execution_id


@pytest.mark.parametrize("header_in_every_part", [True, False])
async def test_run_poll_and_download_every_file(
    amc: AmcClient,
    tokens: UserTokens,
    target: AmcTarget,
    simulator: AmcSimulator,
    tmp_path: Path,
    header_in_every_part: bool,
) -> None:
    simulator.unconfirmed.header_in_every_part = header_in_every_part
    simulator.profile("amcinst1").running_seconds = 0.05
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run1-aa")
    seen: list[str] = []

    async def on_status(e: object) -> None:
        seen.append(e.status)  # type: ignore[attr-defined]

    final = await amc.executions.wait_until_terminal(target, tokens, execution_id, on_status=on_status)
    assert final.status == "SUCCEEDED" and "RUNNING" in seen
    assert [c.name for c in final.output_columns] == list(RESULT_COLUMNS)
    assert final.window_start_original == "2026-11-01T00:00:00"
    assert final.raw["timeWindowStart"] == "2026-11-01T04:00:00Z"  # AMC echoes the window in UTC
    sim_execution = simulator.executions[execution_id]
    files = await amc.results.download(
        target, tokens, execution_id, tmp_path / "run", columns=[c.name for c in final.output_columns]
    )
    assert len(files.paths) == 3 and all(p.name.endswith(".csv.gz") for p in files.paths)
    assert _rows(files.paths) == expected_rows(sim_execution, sim_execution.profile.rows)
    assert simulator.calls["download_urls"] == 2  # three links, two to a page


async def test_a_second_download_of_a_kept_result_fetches_nothing(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, tmp_path: Path
) -> None:
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run1-ab")
    await amc.executions.wait_until_terminal(target, tokens, execution_id)
    first = await amc.results.download(target, tokens, execution_id, tmp_path / "run")
    calls = (simulator.calls["download_urls"], simulator.calls["download_file"])
    again = await amc.results.download(target, tokens, execution_id, tmp_path / "run")
    assert again.paths == first.paths
    assert (simulator.calls["download_urls"], simulator.calls["download_file"]) == calls


@pytest.mark.parametrize("slow_step", ["fsync", "write"])
async def test_a_slow_disk_never_holds_the_event_loop_while_a_result_is_kept(
    amc: AmcClient,
    tokens: UserTokens,
    target: AmcTarget,
    simulator: AmcSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slow_step: str,
) -> None:
    """Each part is fsynced before it counts as kept, which on a busy host waits for the disk (0.2-0.7 s seen
    beside a CPU hog); even a write to the page cache blocks while the kernel throttles a busy disk's writeback.
    Every other run shares this loop."""
    waited: list[str] = []
    if slow_step == "fsync":
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            time.sleep(0.4)  # the disk of a busy host
            real_fsync(fd)
            waited.append(slow_step)

        monkeypatch.setattr(os, "fsync", slow_fsync)
    else:
        real_write = results._PartWriter.write

        def throttled_write(self: results._PartWriter, chunk: bytes) -> None:
            time.sleep(0.3)  # dirty pages over the limit: the writer waits for the disk
            real_write(self, chunk)
            waited.append(slow_step)

        monkeypatch.setattr(results._PartWriter, "write", throttled_write)
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run1-ac")
    await amc.executions.wait_until_terminal(target, tokens, execution_id)
    loop = asyncio.get_running_loop()
    with loop_holds(loop, 0.25) as holds:
        files = await amc.results.download(target, tokens, execution_id, tmp_path / "run")
    sim_execution = simulator.executions[execution_id]
    assert _rows(files.paths) == expected_rows(sim_execution, sim_execution.profile.rows)
    assert len(files.paths) == 3 and len(waited) >= 3  # every part waited for the disk, off the loop
    assert holds == []


async def test_a_download_cancelled_mid_write_leaves_no_partial_file_and_no_writer_behind(
    amc: AmcClient,
    tokens: UserTokens,
    target: AmcTarget,
    simulator: AmcSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop cancels a download while its writer's thread is inside a write: the discard waits for that one
    write, then closes and removes the partial file, rather than closing it under the thread."""
    simulator.profile("amcinst1").rows = 9000  # several chunks per part: the batch in flight has more to write
    original_write = results._PartWriter.write
    original_discard = results._PartWriter.discard
    writing, discard_called, release = threading.Event(), threading.Event(), threading.Event()
    events: list[str] = []

    def held_write(self: results._PartWriter, chunk: bytes) -> None:
        writing.set()
        release.wait(30)  # the disk, until the test lets it go
        original_write(self, chunk)
        events.append("written")

    def recorded_discard(self: results._PartWriter) -> None:
        events.append("discard called")
        discard_called.set()
        original_discard(self)
        events.append("discarded")

    monkeypatch.setattr(results._PartWriter, "write", held_write)
    monkeypatch.setattr(results._PartWriter, "discard", recorded_discard)
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run1-ae")
    await amc.executions.wait_until_terminal(target, tokens, execution_id)
    download = asyncio.create_task(amc.results.download(target, tokens, execution_id, tmp_path / "run"))
    assert await asyncio.to_thread(writing.wait, 30), "no write began within 30 s"
    download.cancel()
    assert await asyncio.to_thread(discard_called.wait, 30), "the cancel did not discard the part within 30 s"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await download
    # The write in flight ended before its file was closed, and the rest of its batch was not written.
    assert events == ["discard called", "written", "discarded"]
    assert not list((tmp_path / "run").glob("*.partial"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("request_", [REQUEST, SAVED], ids=["ad-hoc", "saved-workflow"])
async def test_a_504_that_created_the_execution_leaves_exactly_one(
    amc: AmcClient,
    tokens: UserTokens,
    target: AmcTarget,
    simulator: AmcSimulator,
    variant: Unconfirmed,
    request_: ExecutionRequest,
) -> None:
    simulator.unconfirmed = variant
    simulator.add_faults("create_execution", Fault.created_but_504())
    execution_id = await _submit(amc, target, tokens, request_, "recomamp-run2-bb")
    assert len(simulator.executions_for("amcinst1")) == 1
    assert execution_id in simulator.executions
    assert simulator.calls["create_execution"] == 1
    assert simulator.calls["list_executions"] >= 1


@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_post_dropped_before_amc_is_sent_again_once(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, variant: Unconfirmed
) -> None:
    simulator.unconfirmed = variant
    simulator.add_faults("create_execution", Fault.dropped())
    await _submit(amc, target, tokens, REQUEST, "recomamp-run3-cc")
    assert len(simulator.executions_for("amcinst1")) == 1
    assert simulator.calls["create_execution"] == 2


async def test_a_post_whose_answer_was_dropped_after_creation_is_adopted(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.add_faults("create_execution", Fault.created_but_dropped())
    await _submit(amc, target, tokens, SAVED, "recomamp-run4-dd")
    assert len(simulator.executions_for("amcinst1")) == 1
    assert simulator.calls["create_execution"] == 1


async def test_a_listing_that_lags_the_post_is_searched_again_before_posting(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.unconfirmed.listing_lag_seconds = 0.2  # the client waits 0.3 s before its second search
    simulator.add_faults("create_execution", Fault.created_but_504())
    await _submit(amc, target, tokens, REQUEST, "recomamp-run5-ee")
    assert len(simulator.executions_for("amcinst1")) == 1
    assert simulator.calls["list_executions"] >= 2


@pytest.mark.parametrize("request_", [REQUEST, SAVED], ids=["ad-hoc", "saved-workflow"])
async def test_an_analysts_console_execution_with_other_parameters_is_never_adopted(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, request_: ExecutionRequest
) -> None:
    """Same instance, same workflow (or SQL) and window; other parameters: not ours, so ours is created."""
    since = datetime.now(UTC)
    console = simulator.create_console_execution(
        "amcinst1",
        workflow_id=request_.workflow_id,
        sql_query=None if request_.workflow_id else "SELECT something_else FROM t",
        window_start="2026-11-01T00:00:00",
        window_end="2026-11-08T00:00:00",
        timezone="America/New_York",
        parameter_values={"brand": "other"} if request_.workflow_id else {},
    )
    found = await amc.executions.submit_once(
        target, tokens, request_, marker="recomamp-run6-ff", since=since, check_first=True
    )
    assert found.execution_id != console.execution_id
    assert len(simulator.executions_for("amcinst1")) == 2
    assert simulator.calls["create_execution"] == 1


async def test_an_execution_from_before_the_attempt_is_never_adopted(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    earlier = simulator.create_console_execution(
        "amcinst1",
        workflow_id="wf-weekly",
        window_start="2026-11-01T00:00:00",
        window_end="2026-11-08T00:00:00",
        timezone="America/New_York",
        parameter_values={"brand": "acme"},
    )
    earlier.create_time -= timedelta(hours=1)
    found = await amc.executions.submit_once(
        target, tokens, SAVED, marker="recomamp-run7-gg", since=datetime.now(UTC), check_first=True
    )
    assert found.execution_id != earlier.execution_id


async def test_a_resumed_submit_finds_the_earlier_execution_among_others(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    since = datetime.now(UTC)
    for marker in ("recomamp-run90-a", "recomamp-run91-b", "recomamp-run92-c", "recomamp-run8-hh"):
        await amc.executions.create(target, tokens, REQUEST, marker=marker)
    found = await amc.executions.submit_once(
        target, tokens, REQUEST, marker="recomamp-run8-hh", since=since, check_first=True
    )
    assert found.workflow_id == "recomamp-run8-hh" or found.marker == "recomamp-run8-hh"
    assert simulator.calls["create_execution"] == 4
    assert simulator.calls["list_executions"] >= 2  # the match is on the second page of two


async def test_the_list_filter_is_sent_as_amc_wants_it_and_the_simulator_refuses_a_z(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, http: aiohttp.ClientSession
) -> None:
    listed = [e async for e in amc.executions.list_since(target, tokens, since=datetime.now(UTC) - timedelta(hours=1))]
    assert listed == []
    token = await tokens()
    headers = {
        "Authorization": f"Bearer {token}",
        "Amazon-Advertising-API-ClientId": simulator.client_id,
        "Amazon-Advertising-API-AdvertiserId": "E",
        "Amazon-Advertising-API-MarketplaceId": "M",
    }
    url = f"{simulator.base_url}/amc/reporting/amcinst1/workflowExecutions"
    async with http.get(url, params={"minCreationTime": "2026-11-01T00:00:00.000Z"}, headers=headers) as response:
        assert response.status == 400
        assert "Must provide either workflowId or minCreationTime" in await response.text()


async def test_no_accept_header_is_sent(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    await _submit(amc, target, tokens, REQUEST, "recomamp-run9-ii")
    assert "Accept" not in simulator.last_headers["create_execution"]
    assert simulator.last_headers["create_execution"]["Content-Type"].startswith("application/json")


async def test_cancel_is_a_put_then_a_get_and_a_second_cancel_is_refused(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").running_seconds = 60
    execution = await amc.executions.create(target, tokens, REQUEST, marker="recomamp-run10-jj")
    cancelled = await amc.executions.cancel(target, tokens, execution.execution_id)
    assert cancelled.status == "CANCELLED"
    assert simulator.calls["get_execution"] == 1  # the PUT answered {}: the status came from a GET
    with pytest.raises(AmcError) as excinfo:
        await amc.executions.cancel(target, tokens, execution.execution_id)
    assert excinfo.value.status == 400


async def test_an_unavailable_download_channel_is_reported(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").download_unavailable = "Output exceeds the download size limit"
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run11-kk")
    final = await amc.executions.wait_until_terminal(target, tokens, execution_id)
    assert final.unavailable_download() == "Output exceeds the download size limit"


@pytest.mark.parametrize("status", [400, 429])
async def test_amcs_quota_refusal_is_classified_as_quota_whatever_its_status(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, status: int
) -> None:
    simulator.adhoc_quota = 2
    simulator.quota_refusal_status = status
    for n in range(2):
        await amc.executions.create(target, tokens, REQUEST, marker=f"recomamp-run{20 + n}-q")
    with pytest.raises(QuotaRefused) as excinfo:
        await amc.executions.create(target, tokens, REQUEST, marker="recomamp-run22-q")
    assert excinfo.value.status == status and excinfo.value.transient
    assert len(simulator.executions_for("amcinst1")) == 2


async def test_discovery_lists_accounts_and_instances_with_their_endpoint(
    amc: AmcClient, tokens: UserTokens, simulator: AmcSimulator
) -> None:
    simulator.add_instance("ada@example.com", "amc-a", account_id="ENT-A", name="Ada US")
    simulator.add_instance("ada@example.com", "amc-b", account_id="ENT-A", api_endpoint="http://eu.example")
    simulator.add_instance("ada@example.com", "amc-c", account_id="ENT-C", marketplace_id="A1F83G8C2ARO7P")
    simulator.add_instance("someone@example.com", "amc-z")
    found = await amc.accounts.discover(simulator.base_url, tokens)
    assert sorted((i.account.account_id, i.instance_id, i.api_endpoint) for i in found) == [
        ("ENT-A", "amc-a", simulator.base_url),
        ("ENT-A", "amc-b", "http://eu.example"),
        ("ENT-C", "amc-c", simulator.base_url),
    ]


async def test_a_401_while_polling_refreshes_once_and_goes_on(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").running_seconds = 0.1
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run12-ll")
    assert simulator.calls["lwa_token"] == 1

    async def expire_on_running(e: object) -> None:
        if e.status == "RUNNING":  # type: ignore[attr-defined]
            simulator.expire_access_tokens()

    final = await amc.executions.wait_until_terminal(target, tokens, execution_id, on_status=expire_on_running)
    assert final.status == "SUCCEEDED"
    assert simulator.calls["lwa_token"] == 2


async def test_an_expired_link_is_fetched_again(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, tmp_path: Path
) -> None:
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run13-mm")
    simulator.link_ttl_seconds = -1  # every link handed out from now on is already expired
    calls_before = simulator.calls["download_urls"]
    original = amc.executions.download_urls

    async def urls_then_restore(*args: object, **kwargs: object) -> list[str]:
        urls = await original(*args, **kwargs)  # type: ignore[arg-type]
        simulator.link_ttl_seconds = 600
        return urls

    amc.executions.download_urls = urls_then_restore  # type: ignore[method-assign]
    files = await amc.results.download(target, tokens, execution_id, tmp_path)
    sim_execution = simulator.executions[execution_id]
    assert _rows(files.paths) == expected_rows(sim_execution, sim_execution.profile.rows)
    assert simulator.calls["download_urls"] - calls_before == 4  # twice, two pages each
    assert simulator.calls["download_file"] == 4  # one 403, then three files


async def test_a_truncated_file_is_fetched_again_without_duplicates(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator, tmp_path: Path
) -> None:
    simulator.profile("amcinst1").rows = 9000  # several chunks per file, so a cut lands mid-file
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run14-nn")
    simulator.add_faults("download_file", Fault.truncated())
    files = await amc.results.download(target, tokens, execution_id, tmp_path)
    sim_execution = simulator.executions[execution_id]
    assert _rows(files.paths) == expected_rows(sim_execution, 9000)
    assert simulator.calls["download_file"] == 4
    assert not list(tmp_path.glob("*.partial"))


async def test_throttled_and_failing_reads_are_retried(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run15-oo")
    simulator.add_faults("get_execution", Fault.throttled(retry_after=0), Fault.throttled(), Fault.http(502))
    assert (await amc.executions.get(target, tokens, execution_id)).status == "SUCCEEDED"
    assert simulator.calls["get_execution"] == 4


async def test_a_failed_execution_carries_its_reason(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").fail_reason = "Column 'impresions' does not exist"
    execution_id = await _submit(amc, target, tokens, REQUEST, "recomamp-run16-pp")
    final = await amc.executions.wait_until_terminal(target, tokens, execution_id)
    assert (final.status, final.status_reason) == ("FAILED", "Column 'impresions' does not exist")


async def test_a_bad_request_is_permanent_with_amc_details(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    ancient = ExecutionRequest(
        window_start=datetime(2001, 1, 1), window_end=datetime(2001, 1, 2), timezone="UTC", sql_query="SELECT 1"
    )
    with pytest.raises(AmcError) as excinfo:
        await _submit(amc, target, tokens, ancient, "recomamp-run17-qq")
    assert excinfo.value.status == 400 and not excinfo.value.transient
    assert "before our stated retention period" in str(excinfo.value)
    assert simulator.calls["create_execution"] == 1


async def test_uncertain_posts_give_up_after_the_attempts_without_a_duplicate(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.add_faults("create_execution", *[Fault.http(503)] * 10)
    with pytest.raises(SubmitUncertain):
        await _submit(amc, target, tokens, REQUEST, "recomamp-run18-rr")
    assert simulator.executions_for("amcinst1") == []
    assert simulator.calls["create_execution"] == POLICY.max_attempts


async def test_polling_stops_at_its_deadline(
    amc: AmcClient, tokens: UserTokens, target: AmcTarget, simulator: AmcSimulator
) -> None:
    simulator.profile("amcinst1").running_seconds = 3600
    execution = await amc.executions.create(target, tokens, REQUEST, marker="recomamp-run19-ss")
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(AmcError, match="still RUNNING after 250 s of polling") as excinfo:
        await amc.executions.wait_until_terminal(
            target, tokens, execution.execution_id, deadline_seconds=250, clock=lambda: float(next(ticks))
        )
    assert not excinfo.value.transient


def test_a_write_or_finish_that_reaches_a_discarded_part_changes_nothing(tmp_path: Path) -> None:
    """The thread of a cancelled write may get the writer's lock only after the discard: it must not write to
    the closed file, and a finish must not make a whole part of what was thrown away."""
    writer = results._PartWriter(tmp_path / results.part_name(0), None)
    writer.write_all([b"a,b\n1,2\n"])
    writer.discard()
    writer.write_all([b"3,4\n"])  # no ValueError from a closed file
    with pytest.raises(OSError, match="discarded"):
        writer.finish()
    assert list(tmp_path.iterdir()) == []


def test_a_discard_that_cannot_remove_its_file_says_so_and_does_not_replace_the_error_on_its_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A discard runs while a disk error or a cancel is on its way up; an EIO of its own is logged, not raised."""
    writer = results._PartWriter(tmp_path / results.part_name(0), None)
    writer.write_all([b"a,b\n1,2\n"])

    def failing_unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "unlink", failing_unlink)
    with capture_logs() as captured:
        writer.discard()
    (left,) = captured.events("amc_result_partial_left")
    assert left["path"] == str(tmp_path / "part-00000.csv.gz.partial")
    assert left["detail"] == "Input/output error"
