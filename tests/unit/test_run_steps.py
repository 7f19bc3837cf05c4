"""The run's step machine on the in-memory run store: every step, every resume point, every failure class.

The pipeline here is the daemon's own (daemon.pipeline.RunPipeline), handed recomamp.testing's MemoryRunStore
and fakes of the token service, AMC and the Snowflake sink; the outage gate, the lease keeper and the metrics
are the real ones. What only Postgres can show (locks, SKIP LOCKED, fencing under a real kill) is in
tests/integration (test_fencing, test_run_claims, test_daemon).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from recomamp.amazon.transport import AmcError, QuotaRefused
from recomamp.config import Config, load_config
from recomamp.daemon.pipeline import RunPipeline
from recomamp.domain.retry import TokenError
from recomamp.domain.runs import (
    Cancelled,
    Defer,
    Fail,
    Finish,
    Leave,
    Lost,
    OutcomeStatus,
    Release,
    RunOutcome,
    Step,
    Succeeded,
    Tally,
    Wait,
    resume_step,
    verdict,
)
from recomamp.snowflake.apply import LoadSuperseded
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.testing import (
    FakeAmc,
    FakeSink,
    FakeTokens,
    LogCapture,
    MemoryRunStore,
    capture_logs,
    memory_services,
    snowflake_settings_row,
)
from tests.conftest import ConfigWriter

MARKER = "recomamp-run1-0a0b0c0d"
TABLE = "ANALYTICS.AMC.DAILY_ROWS"


@dataclass
class Bench:
    config: Config
    store: MemoryRunStore = field(default_factory=MemoryRunStore)
    tokens: FakeTokens = field(default_factory=FakeTokens)
    amc: FakeAmc = field(default_factory=FakeAmc)
    sink: FakeSink = field(default_factory=FakeSink)

    def __post_init__(self) -> None:
        self.services = memory_services(tokens=self.tokens, amc=self.amc, sink=self.sink)

    def add_loading_run(self, **fields: Any) -> int:
        """A run that loads into Snowflake, its user with active settings."""
        self.store.snowflake[1] = snowflake_settings_row(self.services.box())
        return self.store.add_run(target_enabled=True, target_table_name="daily_rows", **fields)

    async def run(self, run_id: int = 1, *, once: bool = False) -> RunOutcome:
        lease = self.store.claim(run_id)
        self.services.leases.hold(lease, time.monotonic())
        pipeline = RunPipeline(self.services, "memory", lambda: self.config, once=once, store=self.store)
        return await pipeline.execute(lease)


@pytest.fixture
def bench(write_config: ConfigWriter, tmp_path: Path) -> Bench:
    path = write_config(
        daemon={"spool_dir": str(tmp_path / "spool"), "max_run_attempts": 3, "run_retry_delay_seconds": 60.0}
    )
    return Bench(load_config(path))


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    with capture_logs() as captured:
        yield captured


# --- every step, from a new run -----------------------------------------------------------------------------


async def test_a_new_run_goes_through_every_step_in_order_and_succeeds(bench: Bench, logs: LogCapture) -> None:
    bench.store.add_run()
    outcome = await bench.run()

    assert outcome == RunOutcome(1, OutcomeStatus.SUCCEEDED)
    assert bench.store.calls == [
        "load_run",
        "begin_attempt",
        "set_step",  # token
        "mark_submitting",  # the marker, before the POST
        "check_fresh",  # the lease, immediately before the POST
        "take_quota_slot",
        "quota_posted",
        "mark_submitted",
        "set_amc_status",  # RUNNING, while AMC works
        "set_amc_status",  # terminal
        "mark_downloaded",
        "set_results_kept",  # keep_results_days = 0: forgotten
        "finish_run",
    ]
    row = bench.store.row(1)
    assert (row["status"], row["step"], row["attempt"]) == ("succeeded", "finished", 1)
    assert row["amc_execution_id"] == "exec-1"
    assert row["amc_status"] == "SUCCEEDED"
    assert row["result_rows"] == 2  # counted here: the run loads nowhere
    assert row["results_path"] is None
    assert bench.amc.posts == [row["submit_marker"]]
    assert row["submit_marker"].startswith("recomamp-run1-")
    assert not (bench.config.daemon.spool_dir / "run-1").exists()
    assert [n for n in logs.names() if n.startswith("run_")] == [
        "run_started",
        "run_submitted",
        "run_downloaded",
        "run_finished",
    ]


async def test_a_run_that_loads_into_snowflake_records_the_load(bench: Bench) -> None:
    bench.add_loading_run()
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.SUCCEEDED
    row = bench.store.row(1)
    assert (row["snowflake_status"], row["snowflake_table"], row["snowflake_rows"]) == ("completed", TABLE, 2)
    assert row["attempt_step"] == Step.UPLOADING.value  # the load began (its thread was had)
    assert row["result_rows"] is None  # counted by the load, not by the download
    [load] = bench.sink.loads
    assert (load.run_id, load.amc_execution_id, load.replace_loaded) == (1, "exec-1", False)
    calls = bench.store.calls
    assert calls.index("mark_downloaded") < calls.index("snowflake_settings") < calls.index("finish_run")
    assert calls.count("check_fresh") == 2  # before the POST and before the COMMIT


async def test_results_are_kept_for_keep_results_days(write_config: ConfigWriter, tmp_path: Path) -> None:
    path = write_config(daemon={"spool_dir": str(tmp_path / "spool"), "keep_results_days": 2})
    bench = Bench(load_config(path))
    bench.store.add_run()
    await bench.run()

    row = bench.store.row(1)
    assert row["results_path"] == str(tmp_path / "spool" / "run-1")
    assert row["results_kept_until"] > datetime.now(UTC) + timedelta(days=1)
    assert (tmp_path / "spool" / "run-1" / "part-00000.csv.gz").exists()


# --- every resume point: the handler of the saved step runs first ------------------------------------------


def test_each_saved_step_resumes_at_its_handler() -> None:
    assert [resume_step(step.value) for step in Step if step not in (Step.FINISHED,)] == [
        Step.TOKEN,  # queued
        Step.TOKEN,  # token
        Step.TOKEN,  # submitting: the token again, then AMC searched for the marker
        Step.SUBMITTED,
        Step.SUBMITTED,  # downloading: the spool was the last holder's
        Step.SUBMITTED,  # uploading: the load ledger keeps a committed load from landing twice
    ]
    with pytest.raises(ValueError, match="nothing left to do"):
        resume_step(Step.FINISHED.value)


async def test_after_the_marker_a_post_that_reached_amc_is_found_not_sent_again(bench: Bench) -> None:
    bench.store.add_run(step="submitting", submit_marker=MARKER, submit_started_at=datetime.now(UTC), attempt=1)
    bench.amc.known[MARKER] = "exec-9"
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert bench.amc.posts == []
    assert "take_quota_slot" not in bench.store.calls  # no POST, no slot
    assert bench.amc.waits == ["exec-9"]
    assert bench.store.row(1)["amc_execution_id"] == "exec-9"


async def test_after_the_marker_a_post_that_never_reached_amc_is_sent_with_the_saved_marker(bench: Bench) -> None:
    bench.store.add_run(step="submitting", submit_marker=MARKER, submit_started_at=datetime.now(UTC), attempt=1)
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert bench.amc.posts == [MARKER]


async def test_after_the_execution_id_amc_is_polled_never_submitted(bench: Bench, logs: LogCapture) -> None:
    bench.store.add_run(step="submitted", amc_execution_id="exec-7", submit_marker=MARKER, attempt=1)
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert bench.amc.posts == []
    assert bench.amc.waits == ["exec-7"]
    assert not {"set_step", "mark_submitting", "mark_submitted"} & set(bench.store.calls)
    [resumed] = logs.events("run_resumed")
    assert (resumed["amc_execution_id"], resumed["step"]) == ("exec-7", "submitted")


async def test_after_the_download_amc_is_asked_again_and_the_result_fetched(bench: Bench) -> None:
    bench.store.add_run(step="downloading", amc_execution_id="exec-7", amc_status="SUCCEEDED", attempt=1)
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert bench.amc.posts == []
    assert (bench.amc.waits, bench.amc.downloads) == (["exec-7"], ["exec-7"])


async def test_after_the_load_the_committed_rows_do_not_land_twice(bench: Bench) -> None:
    bench.add_loading_run(step="uploading", amc_execution_id="exec-7", amc_status="SUCCEEDED", attempt=1)
    bench.sink.landed[1] = 2  # the last holder's COMMIT landed, then it died
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert bench.amc.posts == []
    [load] = bench.sink.loads
    assert load.replace_loaded is False
    assert bench.sink.landed == {1: 2}
    assert bench.store.row(1)["snowflake_status"] == "completed"


async def test_a_resumed_run_counts_no_attempt_when_it_moved_on(bench: Bench) -> None:
    bench.store.add_run(step="submitted", amc_execution_id="exec-7", attempt=1)
    bench.store.runs[1].columns["attempt_step"] = "queued"  # the last claim started at queued, got further
    await bench.run()
    assert bench.store.row(1)["attempt"] == 1


# --- each failure class ----------------------------------------------------------------------------------


async def test_a_revoked_token_fails_the_run_before_anything_reaches_amc(bench: Bench) -> None:
    bench.tokens.error = TokenError("reauth_required", "Re-authorize ann@example.com.", permanent=True)
    bench.store.add_run()
    outcome = await bench.run()

    assert outcome == RunOutcome(1, OutcomeStatus.FAILED, "reauth_required", "Re-authorize ann@example.com.")
    assert bench.amc.posts == []
    assert bench.store.row(1)["status"] == "failed"
    [(notice, facts)] = bench.store.notices
    assert (notice.run_id, facts.consecutive_failures) == (1, 1)


async def test_a_temporary_failure_defers_the_run_and_spends_an_attempt(bench: Bench, logs: LogCapture) -> None:
    bench.tokens.error = TokenError("lwa_unavailable", "Login with Amazon is down.", permanent=False)
    bench.store.add_run()
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.DEFERRED
    assert outcome.message == "Login with Amazon is down. Attempt 1 of 3; it will be tried again in 60 s."
    row = bench.store.row(1)
    assert (row["status"], row["attempt"], row["not_before_in_seconds"], row["wait_reason"]) == (
        "pending",
        1,
        60.0,
        None,
    )
    assert logs.events("run_deferred")[0]["retry_in_seconds"] == 60.0


async def test_a_temporary_failure_at_the_last_attempt_fails_the_run(bench: Bench) -> None:
    bench.amc.errors["wait"] = AmcError("AMC answered 503", status=503, transient=True)
    bench.store.add_run(step="submitted", amc_execution_id="exec-7", attempt=2)
    bench.store.runs[1].columns["attempt_step"] = "submitted"  # no progress since: this claim is attempt 3
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_kind == "amc_unavailable"
    assert outcome.message is not None
    assert outcome.message.endswith("Giving up after [daemon] max_run_attempts = 3 attempts.")


async def test_run_once_does_not_wait_to_retry(bench: Bench) -> None:
    bench.amc.errors["download"] = AmcError("AMC answered 503", status=503, transient=True)
    bench.store.add_run()
    outcome = await bench.run(once=True)

    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.message == "AMC: AMC answered 503. Temporary. (`run --once` does not wait to retry.)"


async def test_a_run_past_its_attempts_fails_saying_what_happened(bench: Bench) -> None:
    bench.store.add_run(step="token", attempt=3, interruptions=2, error_message="AMC answered 503")
    bench.store.runs[1].columns["attempt_step"] = "token"
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.FAILED, "too_many_attempts")
    assert outcome.message is not None
    assert "2 of its claims ended mid-run" in outcome.message
    assert bench.store.calls == ["load_run", "begin_attempt", "finish_run"]


@pytest.mark.parametrize(
    ("amc", "kind", "says"),
    [
        (FakeAmc(final_status="FAILED", status_reason="bad SQL"), "amc_execution_failed", "ended FAILED: bad SQL"),
        (FakeAmc(final_status="CANCELLED"), "amc_cancelled", "cancelled outside recomamp"),
        (FakeAmc(download_unavailable="expired"), "amc_output_unavailable", "for download: expired"),
    ],
)
async def test_an_execution_that_offers_no_result_fails_the_run(
    bench: Bench, amc: FakeAmc, kind: str, says: str
) -> None:
    bench.services.amc = amc  # type: ignore[assignment]
    bench.amc = amc
    bench.store.add_run()
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.FAILED, kind)
    assert outcome.message is not None
    assert says in outcome.message
    assert amc.downloads == []
    assert bench.store.row(1)["amc_status"] == amc.final_status


async def test_an_unexpected_error_defers_the_run_and_is_logged(bench: Bench, logs: LogCapture) -> None:
    bench.amc.errors["download"] = RuntimeError("a bug")
    bench.store.add_run()
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.DEFERRED, "unexpected")
    assert len(logs.events("run_unexpected_error")) == 1


async def test_a_full_quota_makes_the_run_wait_at_no_cost_of_an_attempt(bench: Bench, logs: LogCapture) -> None:
    bench.store.quota_limit = 0
    bench.store.add_run()
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.WAITING, "amc_quota")
    assert bench.amc.posts == []
    row = bench.store.row(1)
    assert (row["status"], row["attempt"], row["wait_reason"]) == ("pending", 0, "amc_quota")
    assert 3500 < row["not_before_in_seconds"] <= 3600
    assert len(logs.events("run_waiting")) == 1


async def test_amc_refusing_for_its_quota_makes_the_run_wait(bench: Bench) -> None:
    bench.amc.errors["submit"] = QuotaRefused(
        "429", status=429, detail="ad-hoc quota exceeded", retry_after_seconds=120.0
    )
    bench.store.add_run()
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.WAITING, "amc_quota")
    assert bench.store.refusals == [
        {"slot_id": 1, "instance_key": bench.store.refusals[0]["instance_key"], "detail": "ad-hoc quota exceeded"}
    ]
    assert bench.store.row(1)["attempt"] == 0


async def test_a_claim_taken_over_mid_run_stops_and_records_nothing(bench: Bench, logs: LogCapture) -> None:
    bench.store.add_run()

    def another_replica_claims_it() -> None:
        bench.store.claim(1)

    bench.store.before["mark_downloaded"] = another_replica_claims_it
    outcome = await bench.run()

    assert outcome == RunOutcome(1, OutcomeStatus.LOST)
    assert "finish_run" not in bench.store.calls
    assert "defer_run" not in bench.store.calls
    assert bench.store.row(1)["status"] == "running"  # the other claim's
    assert len(logs.events("run_lease_lost")) == 1


async def test_a_run_cancelled_as_it_submits_cancels_its_execution_at_amc(bench: Bench) -> None:
    bench.store.add_run()
    bench.store.before["mark_submitted"] = lambda: bench.store.cancel(1)
    outcome = await bench.run()

    assert (outcome.status, outcome.message) == (OutcomeStatus.CANCELLED, "cancelled by ops@host")
    assert bench.amc.cancelled == ["exec-1"]  # created, but this claim could not record it
    assert "finish_run" not in bench.store.calls


async def test_a_run_whose_user_has_no_snowflake_settings_fails_and_keeps_its_result(bench: Bench) -> None:
    bench.add_loading_run()
    del bench.store.snowflake[1]
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.FAILED, "snowflake")
    assert outcome.message is not None
    assert "has no active Snowflake configuration" in outcome.message
    assert bench.sink.loads == []
    assert bench.store.row(1)["snowflake_status"] == "failed"


async def test_a_run_with_unusable_snowflake_settings_fails_saying_so(bench: Bench) -> None:
    bench.add_loading_run(target_schema_name="bad schema; DROP")
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.FAILED, "snowflake")
    assert outcome.message is not None
    assert outcome.message.startswith("Snowflake settings cannot be used:")


async def test_a_failed_load_fails_the_run_and_says_how_to_load_it_again(bench: Bench) -> None:
    bench.sink.error = SnowflakeLoadError("warehouse suspended", transient=True, step="copy")
    bench.add_loading_run()
    outcome = await bench.run()

    assert (outcome.status, outcome.error_kind) == (OutcomeStatus.FAILED, "snowflake")
    assert outcome.message is not None
    assert "Temporary." in outcome.message
    assert outcome.message.endswith("load it again with `recomamp runs retry-upload 1`.")
    row = bench.store.row(1)
    assert (row["snowflake_status"], row["snowflake_table"]) == ("failed", TABLE)


async def test_a_load_superseded_by_a_later_claim_is_a_lost_claim(bench: Bench) -> None:
    bench.sink.error = LoadSuperseded("claim 3 wrote first")
    bench.add_loading_run()
    outcome = await bench.run()

    assert outcome.status is OutcomeStatus.LOST
    assert "finish_run" not in bench.store.calls


async def test_a_deleted_run_is_lost(bench: Bench) -> None:
    bench.store.add_run()
    lease = bench.store.claim(1)
    del bench.store.runs[1]
    pipeline = RunPipeline(bench.services, "memory", lambda: bench.config, once=False, store=bench.store)
    assert await pipeline.execute(lease) == RunOutcome(1, OutcomeStatus.LOST, "missing", "the run was deleted")


# --- the outcome, as a pure function -------------------------------------------------------------------------

NOW = datetime(2026, 11, 2, tzinfo=UTC)


def decide(
    ending: Succeeded | Fail | Defer | Wait | Lost | Cancelled, *, attempt: int = 1, once: bool = False
) -> object:
    return verdict(ending, attempt=attempt, max_attempts=3, once=once, retry_delay_seconds=60.0, now=NOW)


def test_the_verdict_of_each_ending() -> None:
    assert decide(Succeeded()) == Finish(OutcomeStatus.SUCCEEDED, None, None)
    assert decide(Fail("k", "m")) == Finish(OutcomeStatus.FAILED, "k", "m")
    assert decide(Defer("k", "m.", 5.0)) == Release(
        OutcomeStatus.DEFERRED, "k", "m. Attempt 1 of 3; it will be tried again in 5 s.", 5.0
    )
    assert decide(Defer("k", "m.", None), attempt=2) == Release(
        OutcomeStatus.DEFERRED, "k", "m. Attempt 2 of 3; it will be tried again in 60 s.", 60.0
    )
    assert decide(Defer("k", "m."), attempt=3) == Finish(
        OutcomeStatus.FAILED, "k", "m. Giving up after [daemon] max_run_attempts = 3 attempts."
    )
    assert decide(Defer("k", "m."), once=True) == Finish(
        OutcomeStatus.FAILED, "k", "m. (`run --once` does not wait to retry.)"
    )
    until = NOW + timedelta(minutes=10)
    assert decide(Wait("amc_quota", "w", until)) == Release(
        OutcomeStatus.WAITING, "amc_quota", "w", 600.0, until=until, restores_attempt=True
    )
    assert decide(Wait("amc_quota", "w", NOW - timedelta(seconds=1))) == Release(
        OutcomeStatus.WAITING, "amc_quota", "w", 0.0, until=NOW - timedelta(seconds=1), restores_attempt=True
    )
    assert decide(Lost("x")) == Leave()
    assert decide(Cancelled("ops")) == Leave()


def test_the_tally_counts_each_status() -> None:
    tally = Tally()
    for status in [*OutcomeStatus, OutcomeStatus.SUCCEEDED]:
        tally.add(RunOutcome(1, status))
    assert (tally.succeeded, tally.failed, tally.deferred, tally.waiting, tally.cancelled, tally.other) == (
        2,
        1,
        1,
        1,
        1,
        1,
    )
