"""The Snowflake sink against fakesnow in server mode: the real connector, over HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from snowflake.connector.errors import OperationalError

from recomamp.config import RetrySettings, SnowflakeSettings
from recomamp.domain.identifiers import InvalidIdentifier
from recomamp.sandbox.embedded import FakeSnowflake
from recomamp.snowflake.connection import SnowflakeConnectionSpec, server_version
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.snowflake.loader import (
    HOUSEKEEPING,
    LEGACY_WIDENING_SUFFIX,
    STAGING_PREFIX,
    WIDENING_SUFFIX,
    LoadSuperseded,
    LoadTarget,
    RunMetadata,
)
from recomamp.snowflake.sink import SnowflakeSink

SETTINGS = SnowflakeSettings(batch_rows=4, thread_pool_size=2, login_timeout_seconds=10, network_timeout_seconds=30)
RETRY = RetrySettings(snowflake_waits=(0.0,), snowflake_max_attempts=3)
WINDOW = (datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 8, 5, tzinfo=UTC))


@pytest.fixture
def database() -> str:
    return f"TESTDB_{uuid.uuid4().hex[:10].upper()}"


@pytest.fixture
def spec(fakesnow_server: FakeSnowflake, database: str) -> SnowflakeConnectionSpec:
    return SnowflakeConnectionSpec(
        account="acme-test",
        user="LOADER",
        password=SecretStr("loader-password"),
        database=database,
        default_schema="AMC",
        warehouse="LOAD_WH",
        host=fakesnow_server.host,
        port=fakesnow_server.port,
        protocol="http",
    )


def query(spec: SnowflakeConnectionSpec, sql: str) -> list[tuple[Any, ...]]:
    connection = spec.connect(SETTINGS)
    try:
        cursor = connection.cursor()
        cursor.execute(f'CREATE DATABASE IF NOT EXISTS "{spec.database}"')
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        connection.close()


def write_csv(directory: Path, name: str, lines: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def metadata(run_id: int, window: tuple[datetime, datetime] = WINDOW) -> RunMetadata:
    return RunMetadata(
        schedule_id=7, run_id=run_id, window_start=window[0], window_end=window[1], uploaded_at=datetime.now(UTC)
    )


HEADER = "event_date,campaign_id,campaign_name,impressions,spend,is_branded,first_seen_at"
FIRST = [
    HEADER,
    '2026-11-01,1001,"Campaign 1001, brand",1500,12.50,true,2026-11-01 10:00:00',
    '2026-11-01,1002,"Say ""hi""",900,3.25,false,2026-11-01 11:30:00',
    "2026-11-02,1001,Campaign 1001,1700,14.00,true,2026-11-02 10:00:00",
]
SECOND = [HEADER, "2026-11-02,1002,Campaign 1002,800,2.00,false,", "2026-11-03,1003,,50,0.10,,"]


async def create_database(spec: SnowflakeConnectionSpec) -> None:
    query(spec, "SELECT 1")


async def test_the_first_load_creates_the_table_with_inferred_types(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    files = [write_csv(tmp_path, "part-00000.csv", FIRST), write_csv(tmp_path, "part-00001.csv", SECOND)]
    sink = SnowflakeSink(SETTINGS, RETRY)
    result = await sink.load(spec, LoadTarget(spec.database, "AMC", "daily_results"), metadata(1), files)
    await sink.close(5)
    assert (result.rows, result.batches, result.created_table) == (5, 2, True)
    assert result.table == f"{spec.database}.AMC.DAILY_RESULTS"
    types = dict(
        query(
            spec,
            f'SELECT column_name, data_type FROM "{spec.database}".information_schema.columns '
            "WHERE table_schema = 'AMC' AND table_name = 'DAILY_RESULTS'",
        )
    )
    assert types["EVENT_DATE"] == "DATE"
    assert types["CAMPAIGN_ID"] == "NUMBER"
    assert types["CAMPAIGN_NAME"] == "TEXT"
    assert types["SPEND"] == "NUMBER"
    assert types["IS_BRANDED"] == "BOOLEAN"
    assert types["FIRST_SEEN_AT"].startswith("TIMESTAMP")
    assert types["UPLOADED_AT"].startswith("TIMESTAMP")
    rows = query(
        spec,
        f'SELECT campaign_id, campaign_name, spend, recomamp_run_id FROM "{spec.database}".AMC.DAILY_RESULTS '
        "ORDER BY event_date, campaign_id",
    )
    assert rows[0][:2] == (1001, "Campaign 1001, brand")
    assert rows[1][1] == 'Say "hi"'
    assert str(rows[0][2]) == "12.50"
    assert {row[3] for row in rows} == {1}


async def test_a_rerun_of_the_same_window_replaces_it(spec: SnowflakeConnectionSpec, tmp_path: Path) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "daily_results")
    sink = SnowflakeSink(SETTINGS, RETRY)
    files = [write_csv(tmp_path, "part-00000.csv", FIRST)]
    await sink.load(spec, target, metadata(1), files)
    await sink.load(spec, target, metadata(2), files)
    other_window = (datetime(2026, 11, 8, 5, tzinfo=UTC), datetime(2026, 11, 15, 5, tzinfo=UTC))
    await sink.load(spec, target, metadata(3, other_window), files)
    await sink.close(5)
    counts = query(
        spec,
        f'SELECT recomamp_run_id, COUNT(*) FROM "{spec.database}".AMC.DAILY_RESULTS GROUP BY 1 ORDER BY 1',
    )
    assert counts == [(2, 3), (3, 3)]  # run 1's window was replaced by run 2; run 3 is a new window


async def test_a_new_column_is_added_and_a_misfit_column_widened(spec: SnowflakeConnectionSpec, tmp_path: Path) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "evolving")
    sink = SnowflakeSink(SETTINGS, RETRY)
    await sink.load(spec, target, metadata(1), [write_csv(tmp_path / "a", "p.csv", ["id,code", "1,10", "2,20"])])
    later = ["id,code,audience", "3,X-30,in-market", "4,40,lifestyle"]
    later_window = (datetime(2026, 11, 8, tzinfo=UTC), datetime(2026, 11, 9, tzinfo=UTC))
    result = await sink.load(spec, target, metadata(2, later_window), [write_csv(tmp_path / "b", "p.csv", later)])
    await sink.close(5)
    assert result.added_columns == ["AUDIENCE"]
    assert result.widened_columns == ["CODE"]
    rows = query(spec, f'SELECT id, code, audience FROM "{spec.database}".AMC.EVOLVING ORDER BY id')
    assert rows == [(1, "10", None), (2, "20", None), (3, "X-30", "in-market"), (4, "40", "lifestyle")]


def column_types(spec: SnowflakeConnectionSpec, table: str) -> dict[str, tuple[str, int | None]]:
    rows = query(
        spec,
        f'SELECT column_name, data_type, numeric_scale FROM "{spec.database}".information_schema.columns '
        f"WHERE table_schema = 'AMC' AND table_name = '{table}'",
    )
    return {str(name): (str(kind), scale) for name, kind, scale in rows}


async def test_a_number_column_widens_to_a_wider_number_not_to_text(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "spend")
    sink = SnowflakeSink(SETTINGS, RETRY)
    window = iter((datetime(2026, 11, day, tzinfo=UTC), datetime(2026, 11, day + 1, tzinfo=UTC)) for day in (1, 2, 3))
    await sink.load(spec, target, metadata(1, next(window)), [write_csv(tmp_path / "a", "p.csv", ["id,spend", "1,10"])])
    assert column_types(spec, "SPEND")["SPEND"] == ("NUMBER", 0)
    decimals = await sink.load(
        spec, target, metadata(2, next(window)), [write_csv(tmp_path / "b", "p.csv", ["id,spend", "2,2.125"])]
    )
    assert decimals.widened_columns == ["SPEND"]
    assert column_types(spec, "SPEND")["SPEND"] == ("NUMBER", 3)
    floats = await sink.load(
        spec, target, metadata(3, next(window)), [write_csv(tmp_path / "c", "p.csv", ["id,spend", "3,1.5e-07"])]
    )
    await sink.close(5)
    assert floats.widened_columns == ["SPEND"]
    assert column_types(spec, "SPEND")["SPEND"][0] == "FLOAT"
    rows = query(spec, f'SELECT id, spend FROM "{spec.database}".AMC.SPEND ORDER BY id')
    assert [(i, float(v)) for i, v in rows] == [(1, 10.0), (2, 2.125), (3, 1.5e-07)]


async def test_amc_declared_types_decide_what_values_alone_cannot(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "declared")
    sink = SnowflakeSink(SETTINGS, RETRY)
    files = [write_csv(tmp_path, "p.csv", ["Postal Code,clicks,spend", "01234,3,1", "99501,,2"])]
    declared = {"Postal Code": "STRING", "clicks": "LONG", "spend": "DOUBLE"}
    await sink.load(spec, target, metadata(1), files, declared_types=declared)
    await sink.close(5)
    types = column_types(spec, "DECLARED")
    assert types["POSTAL_CODE"][0] == "TEXT"
    assert types["CLICKS"] == ("NUMBER", 0)
    assert types["SPEND"][0] == "FLOAT"
    rows = query(spec, f'SELECT postal_code, clicks FROM "{spec.database}".AMC.DECLARED ORDER BY postal_code')
    assert rows == [("01234", 3), ("99501", None)]  # the leading zero is kept


async def test_staging_tables_are_dropped_and_those_of_dead_loads_cleaned_up(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    query(spec, f'CREATE SCHEMA IF NOT EXISTS "{spec.database}"."AMC"')
    two_days_ago = int(datetime.now(UTC).timestamp()) - 2 * 86_400
    dead, young = f"{STAGING_PREFIX}{two_days_ago}_9_DEADBEEF", f"{STAGING_PREFIX}{two_days_ago + 86_400 + 600}_8_CAFE"
    for name in (dead, young):
        query(spec, f'CREATE TRANSIENT TABLE "{spec.database}"."AMC"."{name}" (X VARCHAR)')
    HOUSEKEEPING.forget()  # a schema is swept at most hourly per process
    sink = SnowflakeSink(SETTINGS, RETRY)
    # Keyed loads make staging tables, so they sweep those of dead loads.
    keyed = LoadTarget(spec.database, "AMC", "cleaned", key_columns=("event_date", "campaign_id"))
    await sink.load(spec, keyed, metadata(1), [write_csv(tmp_path, "p.csv", FIRST)])
    query(spec, f'CREATE TRANSIENT TABLE "{spec.database}"."AMC"."{dead}" (X VARCHAR)')
    await sink.load(spec, keyed, metadata(2), [write_csv(tmp_path, "q.csv", FIRST)])
    await sink.close(5)
    # Swept once in the hour: the dead table made after the first load waits for the next sweep.
    assert query(
        spec,
        f"SELECT COUNT(*) FROM \"{spec.database}\".information_schema.tables WHERE table_name = '{dead}'",
    ) == [(1,)]
    query(spec, f'DROP TABLE "{spec.database}"."AMC"."{dead}"')
    left = query(
        spec,
        f'SELECT table_name FROM "{spec.database}".information_schema.tables '
        f"WHERE table_schema = 'AMC' AND table_name LIKE '{STAGING_PREFIX}%'",
    )
    assert left == [(young,)]  # the dead load's table is gone, and so is this load's own; a young one stays


async def test_key_columns_merge_overlapping_windows_without_duplicates(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "merged", key_columns=("event_date", "campaign_id"))
    sink = SnowflakeSink(SETTINGS, RETRY)
    await sink.load(spec, target, metadata(1), [write_csv(tmp_path / "a", "p.csv", FIRST)])
    # An overlapping window restates 2026-11-02/1001 and repeats one key twice within itself.
    overlap = [
        HEADER,
        "2026-11-02,1001,Campaign 1001,1800,15.00,true,2026-11-02 10:00:00",
        "2026-11-03,1001,Campaign 1001,10,1.00,true,2026-11-03 10:00:00",
        "2026-11-03,1001,Campaign 1001,20,2.00,true,2026-11-03 10:00:00",
    ]
    window = (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC))
    await sink.load(spec, target, metadata(2, window), [write_csv(tmp_path / "b", "p.csv", overlap)])
    await sink.close(5)
    rows = query(spec, f'SELECT event_date, campaign_id, impressions FROM "{spec.database}".AMC.MERGED ORDER BY 1, 2')
    assert [(str(d), c, i) for d, c, i in rows] == [
        ("2026-11-01", 1001, 1500),
        ("2026-11-01", 1002, 900),
        ("2026-11-02", 1001, 1800),
        ("2026-11-03", 1001, 20),  # the later of the two duplicates wins
    ]


async def test_keys_staged_narrower_than_the_tables_columns_still_match(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """No key repeats in the second result, so it is upserted straight from the staging table, where its
    dates are DATE while the table's column is TIMESTAMP: midnight must still be the same key."""
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "keyed_wide", key_columns=("event_date", "campaign_id"))
    sink = SnowflakeSink(SETTINGS, RETRY)
    header = "event_date,campaign_id,impressions"
    first = [header, "2026-11-01 00:00:00,1001,5", "2026-11-01 06:00:00,1001,6"]
    await sink.load(spec, target, metadata(1), [write_csv(tmp_path / "a", "p.csv", first)])
    await sink.load(spec, target, metadata(2), [write_csv(tmp_path / "b", "p.csv", [header, "2026-11-01,1001,7"])])
    await sink.close(5)
    rows = query(spec, f'SELECT event_date, campaign_id, impressions FROM "{spec.database}".AMC.KEYED_WIDE ORDER BY 1')
    assert rows == [(datetime(2026, 11, 1, 0), 1001, 7), (datetime(2026, 11, 1, 6), 1001, 6)]
    # The staged files were written beside the kept result and are gone.
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["p.csv", "p.csv"]


async def test_a_key_pair_config_is_accepted(fakesnow_server: FakeSnowflake, database: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass-phrase"),
    ).decode()
    spec = SnowflakeConnectionSpec(
        account="acme-test",
        user="LOADER",
        private_key_pem=SecretStr(pem),
        private_key_passphrase=SecretStr("pass-phrase"),
        database=database,
        default_schema="AMC",
        host=fakesnow_server.host,
        port=fakesnow_server.port,
        protocol="http",
    )
    kwargs = spec.connect_kwargs(SETTINGS)
    assert kwargs["authenticator"] == "SNOWFLAKE_JWT"
    assert isinstance(kwargs["private_key"], bytes)
    assert "password" not in kwargs
    assert server_version(spec, SETTINGS)


async def test_a_bad_identifier_is_rejected_and_nothing_written(spec: SnowflakeConnectionSpec, tmp_path: Path) -> None:
    await create_database(spec)
    with pytest.raises(InvalidIdentifier, match="snowflake_table_name"):
        LoadTarget(spec.database, "AMC", 'x"; DROP TABLE users; --')
    with pytest.raises(InvalidIdentifier, match="snowflake_schema_name"):
        LoadTarget(spec.database, "my schema", "t")
    tables = query(spec, f'SELECT table_name FROM "{spec.database}".information_schema.tables')
    assert tables == []


async def test_a_lost_copy_answer_is_retried_under_a_new_name_without_duplicates(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    copies: list[str] = []

    def lose_the_first_copy_answer(kind: str, sql: str) -> None:
        if kind == "copy":
            copies.append(sql)
            if len(copies) == 1:
                # The COPY ran; its answer never came back. The retry must not double the batch.
                raise OperationalError(msg="HTTP 503: Service Unavailable", errno=250003)

    sink = SnowflakeSink(SETTINGS, RETRY, after_statement=lose_the_first_copy_answer)
    files = [write_csv(tmp_path, "part-00000.csv", FIRST), write_csv(tmp_path, "part-00001.csv", SECOND)]
    result = await sink.load(spec, LoadTarget(spec.database, "AMC", "retried"), metadata(1), files)
    await sink.close(5)
    assert result.rows == 5
    # The load started again on a fresh connection, under a new stage and prefix: one COPY of every batch
    # each time, and the first one's rows never reach the target.
    assert len(copies) == 2
    first, retried = (sql.split(" FROM ")[1].split(" ")[0] for sql in copies)
    assert first != retried
    assert query(spec, f'SELECT COUNT(*) FROM "{spec.database}".AMC.RETRIED') == [(5,)]


async def test_a_permanent_problem_is_not_retried_and_says_what_to_fix(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    sink = SnowflakeSink(SETTINGS, RETRY)
    target = LoadTarget(spec.database, "AMC", "keyed", key_columns=("no_such_column",))
    with pytest.raises(SnowflakeLoadError) as excinfo:
        await sink.load(spec, target, metadata(1), [write_csv(tmp_path, "p.csv", FIRST)])
    await sink.close(5)
    assert not excinfo.value.transient
    assert "snowflake_key_columns no_such_column are not in the result" in excinfo.value.message


async def test_the_log_context_travels_into_the_thread(
    spec: SnowflakeConnectionSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import structlog

    from recomamp.logs import configure_logging

    await create_database(spec)
    configure_logging("info")
    structlog.contextvars.bind_contextvars(user_email="ada@example.com", run_id=41)
    sink = SnowflakeSink(SETTINGS, RETRY)
    await sink.load(spec, LoadTarget(spec.database, "AMC", "ctx"), metadata(41), [write_csv(tmp_path, "p.csv", FIRST)])
    await sink.close(5)
    structlog.contextvars.clear_contextvars()
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [line for line in lines if line["event"] == "snowflake_load_completed"]
    assert done[0]["user_email"] == "ada@example.com"
    assert done[0]["run_id"] == 41
    assert "loader-password" not in out


@pytest.mark.parametrize("suffix", [WIDENING_SUFFIX, LEGACY_WIDENING_SUFFIX], ids=["this-release", "earlier-release"])
@pytest.mark.parametrize("died_after", ["update", "drop"])
async def test_a_widening_interrupted_midway_is_finished_by_the_next_load(
    spec: SnowflakeConnectionSpec, tmp_path: Path, died_after: str, suffix: str
) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "half_widened")
    sink = SnowflakeSink(SETTINGS, RETRY)
    await sink.load(spec, target, metadata(1), [write_csv(tmp_path / "a", "p.csv", ["id,code", "1,10", "2,20"])])
    table = f'"{spec.database}"."AMC"."HALF_WIDENED"'
    # A load died while widening CODE: after its UPDATE, or after its DROP.
    query(spec, f'ALTER TABLE {table} ADD COLUMN "CODE{suffix}" VARCHAR')
    query(spec, f'UPDATE {table} SET "CODE{suffix}" = CAST("CODE" AS VARCHAR)')
    if died_after == "drop":
        query(spec, f'ALTER TABLE {table} DROP COLUMN "CODE"')
    window = (datetime(2026, 11, 8, tzinfo=UTC), datetime(2026, 11, 9, tzinfo=UTC))
    await sink.load(spec, target, metadata(2, window), [write_csv(tmp_path / "b", "p.csv", ["id,code", "3,X-30"])])
    await sink.close(5)
    rows = query(spec, f"SELECT id, code FROM {table} ORDER BY id")
    assert rows == [(1, "10"), (2, "20"), (3, "X-30")]
    columns = query(
        spec,
        f'SELECT column_name FROM "{spec.database}".information_schema.columns '
        "WHERE table_name = 'HALF_WIDENED' AND column_name LIKE 'CODE%'",
    )
    assert columns == [("CODE",)]


# --- the load ledger: claims of one run are ordered inside Snowflake -------------------------------------


def claimed(run_id: int, claim: int, execution: str = "exec-1", *, replace_loaded: bool = False) -> RunMetadata:
    return replace(metadata(run_id), claim=claim, amc_execution_id=execution, replace_loaded=replace_loaded)


def loads_of(run_id: int, spec: SnowflakeConnectionSpec, table: str = "LEDGERED") -> list[tuple[Any, ...]]:
    return query(
        spec,
        f'SELECT recomamp_run_id, uploaded_at FROM "{spec.database}".AMC.{table} WHERE recomamp_run_id = {run_id}',
    )


async def test_an_adopter_ends_the_open_transaction_of_a_claim_stalled_before_its_commit(
    spec: SnowflakeConnectionSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gap a Postgres lease cannot close: claim 1 passed its fence and stalls before COMMIT (a frozen VM, or a
    killed process whose transaction Snowflake keeps with its locks for 5 idle minutes or 4 hours). Claim 2 (the
    adopter) finds claim 1's named transaction, ends it with SYSTEM$ABORT_TRANSACTION, and loads at once; claim
    1, when it resumes, commits nothing."""
    from recomamp.logs import configure_logging

    await create_database(spec)
    configure_logging("info")
    target = LoadTarget(spec.database, "AMC", "ledgered")
    files = [write_csv(tmp_path, "part-00000.csv", FIRST)]
    loop = asyncio.get_running_loop()
    fence_passed = asyncio.Event()
    resume = asyncio.Event()

    async def stalled_fence() -> None:  # the fence passes, then the process "freezes" before the COMMIT
        fence_passed.set()
        await resume.wait()

    stalled = SnowflakeSink(SETTINGS, RETRY)
    adopter = SnowflakeSink(SETTINGS, RETRY)
    first = asyncio.create_task(stalled.load(spec, target, claimed(41, 1), files, fence=stalled_fence))
    await asyncio.wait_for(fence_passed.wait(), 30)
    # Claim 1's transaction holds the table's lock; the adopter does not wait for Snowflake to abort it.
    second_result = await asyncio.wait_for(adopter.load(spec, target, claimed(41, 2), files), 30)
    assert not first.done()
    loop.call_soon(resume.set)
    with pytest.raises(LoadSuperseded, match="claim 2"):
        await asyncio.wait_for(first, 60)
    await stalled.close(5)
    await adopter.close(5)
    assert not second_result.already_loaded and second_result.rows == 3
    assert len(loads_of(41, spec)) == 3
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events.count("snowflake_stale_claim_aborted") == 1
    assert events.count("snowflake_load_completed") == 1


async def test_an_adopter_finds_what_a_stalled_claim_committed_and_writes_nothing(
    spec: SnowflakeConnectionSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Claim 1 committed (its process stalled after the COMMIT, before Postgres heard of it); claim 2 of the same
    execution finds its ledger row and writes nothing, so the window is not replaced twice."""
    from recomamp.logs import configure_logging

    await create_database(spec)
    configure_logging("info")
    target = LoadTarget(spec.database, "AMC", "ledgered")
    files = [write_csv(tmp_path, "part-00000.csv", FIRST)]
    sink = SnowflakeSink(SETTINGS, RETRY)
    first = await sink.load(spec, target, claimed(40, 1), files)
    loaded = loads_of(40, spec)
    second = await sink.load(spec, target, claimed(40, 2), files)
    await sink.close(5)
    assert (first.already_loaded, second.already_loaded) == (False, True)
    assert second.rows == first.rows == 3
    assert loads_of(40, spec) == loaded  # the same rows, the same uploaded_at: not written again
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events.count("snowflake_load_already_committed") == 1


async def test_a_lower_claim_that_resumes_after_a_higher_one_loaded_commits_nothing(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "ledgered")
    sink = SnowflakeSink(SETTINGS, RETRY)
    await sink.load(spec, target, claimed(42, 2), [write_csv(tmp_path / "a", "part-00000.csv", FIRST)])
    before = loads_of(42, spec)
    with pytest.raises(LoadSuperseded, match="claim 2"):
        await sink.load(spec, target, claimed(42, 1), [write_csv(tmp_path / "b", "part-00000.csv", SECOND)])
    await sink.close(5)
    assert loads_of(42, spec) == before  # the stale claim's rows never landed


async def test_retry_upload_loads_again_and_a_new_execution_is_never_skipped(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "ledgered")
    sink = SnowflakeSink(SETTINGS, RETRY)
    files = [write_csv(tmp_path, "part-00000.csv", FIRST)]
    await sink.load(spec, target, claimed(43, 1), files)
    first = {row[1] for row in loads_of(43, spec)}
    again = await sink.load(spec, target, claimed(43, 2, replace_loaded=True), files)
    assert not again.already_loaded and {row[1] for row in loads_of(43, spec)} != first
    other = await sink.load(spec, target, claimed(43, 3, "exec-2"), [write_csv(tmp_path / "b", "p.csv", SECOND)])
    await sink.close(5)
    assert not other.already_loaded and len(loads_of(43, spec)) == 2


async def test_a_column_that_turns_text_in_a_later_batch_keeps_every_spelling(
    spec: SnowflakeConnectionSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batches are staged typed; when a later batch turns a column to text, the result is staged again as
    text, so "007" lands as "007", not as 7."""
    from recomamp.logs import configure_logging

    await create_database(spec)
    configure_logging("info")
    lines = ["code,amount", *(f"00{n},{n}.5" for n in range(1, 9)), "A12,3"]  # 4 rows a batch: text in the 3rd
    sink = SnowflakeSink(SETTINGS, RETRY)
    result = await sink.load(
        spec, LoadTarget(spec.database, "AMC", "codes"), metadata(45), [write_csv(tmp_path, "p.csv", lines)]
    )
    await sink.close(5)
    assert (result.rows, result.batches) == (9, 3)
    codes = [row[0] for row in query(spec, f'SELECT code FROM "{spec.database}".AMC.CODES ORDER BY amount')]
    assert sorted(codes) == sorted(["001", "002", "003", "004", "005", "006", "007", "008", "A12"])
    amounts = query(spec, f'SELECT SUM(amount) FROM "{spec.database}".AMC.CODES')
    assert float(amounts[0][0]) == sum(n + 0.5 for n in range(1, 9)) + 3
    assert '"snowflake_restaged_as_text"' in capsys.readouterr().out


async def test_a_column_the_table_has_as_text_keeps_the_spelling_of_later_numbers(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "zips")
    sink = SnowflakeSink(SETTINGS, RETRY)
    other_window = (datetime(2026, 11, 8, 5, tzinfo=UTC), datetime(2026, 11, 15, 5, tzinfo=UTC))
    await sink.load(spec, target, metadata(46), [write_csv(tmp_path / "a", "p.csv", ["zip", "A1B 2C3"])])
    # The next window's zips are all digits: staged typed, "02134" would come back as "2134".
    await sink.load(spec, target, metadata(47, other_window), [write_csv(tmp_path / "b", "p.csv", ["zip", "02134"])])
    await sink.close(5)
    rows = query(spec, f'SELECT zip FROM "{spec.database}".AMC.ZIPS ORDER BY recomamp_run_id')
    assert rows == [("A1B 2C3",), ("02134",)]


async def test_a_column_widened_to_text_by_the_table_keeps_the_spelling_of_this_load(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """The table has FLAG as BOOLEAN; this load's values are numbers with leading zeros. The column widens to
    text (the narrowest type for both), and this load's values land as they were written."""
    await create_database(spec)
    target = LoadTarget(spec.database, "AMC", "flags")
    sink = SnowflakeSink(SETTINGS, RETRY)
    other_window = (datetime(2026, 11, 8, 5, tzinfo=UTC), datetime(2026, 11, 15, 5, tzinfo=UTC))
    await sink.load(spec, target, metadata(48), [write_csv(tmp_path / "a", "p.csv", ["flag", "true"])])
    result = await sink.load(
        spec, target, metadata(49, other_window), [write_csv(tmp_path / "b", "p.csv", ["flag", "007", "10"])]
    )
    await sink.close(5)
    assert result.rows == 2
    kinds = query(
        spec,
        f'SELECT data_type FROM "{spec.database}".information_schema.columns '
        "WHERE table_name = 'FLAGS' AND column_name = 'FLAG'",
    )
    assert kinds == [("TEXT",)]
    rows = query(spec, f'SELECT flag FROM "{spec.database}".AMC.FLAGS ORDER BY recomamp_run_id, flag')
    assert [r[0].lower() for r in rows] == ["true", "007", "10"]
