"""The loader on an emulator that locks, commits, aborts, reads Parquet and costs as Snowflake documents
(recomamp.sandbox.snowflake_emulator): right values, concurrent loads, few round trips, nothing half-committed."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from recomamp.config import RetrySettings, SnowflakeSettings
from recomamp.sandbox.embedded import FakeSnowflake, start_fakesnow
from recomamp.snowflake import loader as loader_module
from recomamp.snowflake.connection import SnowflakeConnectionSpec
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.snowflake.loader import LoadSuperseded, LoadTarget, RunMetadata
from recomamp.snowflake.sink import LoadTimedOut, SnowflakeSink
from recomamp.testing import loop_holds

pytestmark = pytest.mark.slow

SETTINGS = SnowflakeSettings(batch_rows=4, thread_pool_size=20, login_timeout_seconds=30, network_timeout_seconds=120)
RETRY = RetrySettings(snowflake_waits=(0.0,), snowflake_max_attempts=3)
WINDOW = (datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 2, 4, tzinfo=UTC))
HEADER = "event_date,campaign_id,campaign_name,impressions,first_seen_at"
ROWS = [
    HEADER,
    "2026-11-01,1001,Brand A,1500,2026-11-01 10:00:00",
    "2026-11-01,1002,NA,900,2026-11-01T11:30:00.250Z",
    "2026-11-01,1003,,50,",
]
NULL_MARKERS = ["NA", "N/A", "null", "NULL", "nan", "NaN", "None", "#N/A", "n/a", "-NaN"]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSnowflake]:
    """An emulator of this module's own: its tests change its latency and faults."""
    server = start_fakesnow(log_path=tmp_path_factory.mktemp("emulator") / "emulator.log")
    yield server
    server.stop()


@pytest.fixture
def spec(emulator: FakeSnowflake) -> SnowflakeConnectionSpec:
    return SnowflakeConnectionSpec(
        account="acme-test",
        user="LOADER",
        password=SecretStr("loader-password"),
        database=f"REAL_{uuid.uuid4().hex[:10].upper()}",
        default_schema="AMC",
        warehouse="LOAD_WH",
        host=emulator.host,
        port=emulator.port,
        protocol="http",
    )


def query(spec: SnowflakeConnectionSpec, sql: str) -> list[tuple[Any, ...]]:
    connection = spec.connect(SETTINGS)
    try:
        cursor = connection.cursor()
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        connection.close()


def csv(directory: Path, lines: list[str], name: str = "part-00000.csv") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return [path]


def metadata(run_id: int, claim: int = 1, execution: str = "exec-1") -> RunMetadata:
    return RunMetadata(
        schedule_id=7,
        run_id=run_id,
        window_start=WINDOW[0],
        window_end=WINDOW[1],
        uploaded_at=datetime.now(UTC),
        claim=claim,
        amc_execution_id=execution,
    )


def usage(emulator: FakeSnowflake, run_id: int) -> dict[str, Any]:
    """The emulator's account of one run's loads, by the QUERY_TAG the loader sets."""
    total: dict[str, Any] = {"statements": 0, "warehouse_statements": 0, "information_schema_queries": 0}
    total["lock_waits"] = 0
    for tag, counts in emulator.account()["by_query_tag"].items():
        if tag.startswith("{") and json.loads(tag).get("run") == run_id:
            for key in total:
                total[key] += counts[key]
    return total


async def test_timestamps_land_as_amc_sent_them_and_a_rerun_replaces_its_window(
    spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """(c) and (f): the window columns and a result's timestamp read back as sent (Snowflake reads a Parquet
    timestamp without USE_LOGICAL_TYPE as an integer), so the rerun's DELETE matches and each key lands once."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    sink = SnowflakeSink(SETTINGS, RETRY)
    target = LoadTarget(spec.database, "AMC", "series")
    await sink.load(spec, target, metadata(1), csv(tmp_path / "a", ROWS))
    await sink.load(spec, target, metadata(2, execution="exec-2"), csv(tmp_path / "b", ROWS))
    await sink.close(5)
    rows = query(
        spec,
        f"SELECT campaign_id, first_seen_at, recomamp_window_start, recomamp_window_end, recomamp_run_id "
        f"FROM {spec.database}.AMC.SERIES ORDER BY campaign_id",
    )
    assert rows == [
        (1001, datetime(2026, 11, 1, 10), datetime(2026, 11, 1, 4), datetime(2026, 11, 2, 4), 2),
        (1002, datetime(2026, 11, 1, 11, 30, 0, 250_000), datetime(2026, 11, 1, 4), datetime(2026, 11, 2, 4), 2),
        (1003, None, datetime(2026, 11, 1, 4), datetime(2026, 11, 2, 4), 2),
    ]
    (uploaded,) = query(spec, f"SELECT MAX(uploaded_at) FROM {spec.database}.AMC.SERIES")[0]
    assert abs((uploaded - datetime.now(UTC).replace(tzinfo=None)).total_seconds()) < 300


async def test_without_use_logical_type_the_emulator_refuses_the_timestamps(
    spec: SnowflakeConnectionSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above fails without USE_LOGICAL_TYPE = TRUE: this is that load, and Snowflake's reading of it."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    monkeypatch.setattr(
        loader_module, "PARQUET_COPY", "FILE_FORMAT=(TYPE=PARQUET) MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE"
    )
    sink = SnowflakeSink(SETTINGS, RETRY)
    with pytest.raises(SnowflakeLoadError, match="USE_LOGICAL_TYPE"):
        await sink.load(spec, LoadTarget(spec.database, "AMC", "series"), metadata(3), csv(tmp_path, ROWS))
    await sink.close(5)


async def test_text_that_looks_like_a_null_marker_stays_text(spec: SnowflakeConnectionSpec, tmp_path: Path) -> None:
    """(d): only an empty field is no value; NA is Amazon's code for North America."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    lines = ["region,campaign_id", *(f"{marker},{n}" for n, marker in enumerate(NULL_MARKERS)), ",99"]
    sink = SnowflakeSink(SETTINGS, RETRY)
    await sink.load(spec, LoadTarget(spec.database, "AMC", "regions"), metadata(4), csv(tmp_path, lines))
    await sink.close(5)
    rows = query(spec, f"SELECT campaign_id, region FROM {spec.database}.AMC.REGIONS ORDER BY campaign_id")
    assert rows == [*((n, marker) for n, marker in enumerate(NULL_MARKERS)), (99, None)]


async def test_a_copy_that_finds_no_file_fails_the_load_and_leaves_the_window_as_it_was(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """(e): Snowflake's COPY succeeds when it finds no file; the loader checks COPY's result rows, so a window
    whose staged files vanished is not committed empty. (f): the next load of the window lands each key once."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    sink = SnowflakeSink(SETTINGS, RETRY)
    target = LoadTarget(spec.database, "AMC", "kept")
    await sink.load(spec, target, metadata(5), csv(tmp_path / "a", ROWS))
    before = query(spec, f"SELECT * FROM {spec.database}.AMC.KEPT ORDER BY campaign_id")
    with emulator.configured(lose_uploads=RETRY.snowflake_max_attempts), pytest.raises(SnowflakeLoadError) as failed:
        await sink.load(spec, target, metadata(6, execution="exec-6"), csv(tmp_path / "b", ROWS))
    assert "loaded 0 of the 3 rows staged" in str(failed.value)
    assert query(spec, f"SELECT * FROM {spec.database}.AMC.KEPT ORDER BY campaign_id") == before
    await sink.load(spec, target, metadata(7, execution="exec-7"), csv(tmp_path / "c", ROWS))
    await sink.close(5)
    keys = query(spec, f"SELECT campaign_id, COUNT(*), MAX(recomamp_run_id) FROM {spec.database}.AMC.KEPT GROUP BY 1")
    assert sorted(keys) == [(1001, 1, 7), (1002, 1, 7), (1003, 1, 7)]


async def test_twenty_loads_into_twenty_tables_of_one_schema_never_wait_on_each_other(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """(a): loads into different tables share no lock (an UPDATE of one ledger table per schema made every load
    of the schema wait for the one before). With every COPY taking 5 s, the twenty COPYs run side by side: no
    statement waited for a lock, and the emulator saw them in flight together (one behind another, never more
    than one would be). Wall-clock times are printed, not asserted: on a busy machine they say little."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    sink = SnowflakeSink(SETTINGS, RETRY)
    targets = [LoadTarget(spec.database, "AMC", f"t{n:02d}") for n in range(20)]
    files = csv(tmp_path, ROWS)

    async def twenty(first_run: int) -> float:
        started = time.monotonic()
        await asyncio.gather(*(sink.load(spec, t, metadata(first_run + n), files) for n, t in enumerate(targets)))
        return time.monotonic() - started

    await twenty(100)  # the tables exist from here on
    without_delay = await twenty(200)
    with emulator.configured(copy_seconds=5.0):
        emulator.reset_account()
        with_delay = await twenty(300)
        peak = emulator.account()["peak_in_flight"].get("copy", 0)
    await sink.close(5)
    print(f"twenty loads: {without_delay:.1f} s, {with_delay:.1f} s with a 5 s COPY each; {peak} COPYs at once")
    assert sum(usage(emulator, 300 + n)["lock_waits"] for n in range(20)) == 0
    assert peak >= 10, f"at most {peak} of the twenty COPYs ran at once"


async def test_a_load_thread_slow_to_start_never_holds_the_event_loop(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread.start waits until the new thread runs, which needs the GIL and a CPU: beside twenty busy load threads
    that took 0.14 s at the median (over 1 s beside a CPU hog), and every run shares the loop that waited."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    real_start = threading.Thread.start

    def slow_start(thread: threading.Thread) -> None:
        if thread.name.startswith("snowflake-run"):
            time.sleep(0.4)  # the GIL and the CPU are busy
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    sink = SnowflakeSink(SETTINGS, RETRY)
    with loop_holds(asyncio.get_running_loop(), 0.25) as holds:  # the load's steps, in a task of its own
        result = await asyncio.create_task(
            sink.load(spec, LoadTarget(spec.database, "AMC", "slow_start"), metadata(900), csv(tmp_path, ROWS))
        )
    assert await sink.close(5) == 0
    assert result.rows == len(ROWS) - 1  # the header is not a row
    assert holds == []


async def test_a_load_thread_that_cannot_start_fails_its_load_and_leaves_none_in_flight(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = threading.Thread.start

    def no_thread(thread: threading.Thread) -> None:
        if thread.name.startswith("snowflake-run"):
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    sink = SnowflakeSink(SETTINGS, RETRY)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        await sink.load(spec, LoadTarget(spec.database, "AMC", "no_thread"), metadata(901), csv(tmp_path, ROWS))
    assert sink.loads_in_flight == 0
    assert await sink.close(1) == 0


def test_a_thread_start_answered_after_its_loop_closed_leaves_the_starter_thread_unharmed(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside a CPU hog the sink's starter thread ran a refused start only after the caller's loop had closed;
    its answer then raised "Event loop is closed" in the starter, which died of it, and no load could start again.
    Now the answer has nobody to go to and is dropped, and the starter goes on to its next request."""
    release = threading.Event()
    real_start = threading.Thread.start

    def held_then_refused(thread: threading.Thread) -> None:
        if thread.name.startswith("snowflake-run"):
            release.wait(30)  # the starter, descheduled
            raise RuntimeError("can't start new thread")
        real_start(thread)

    escaped: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading.Thread, "start", held_then_refused)
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    before = set(threading.enumerate())
    sink = SnowflakeSink(SETTINGS, RETRY)

    async def load_cut_off() -> None:
        target = LoadTarget(spec.database, "AMC", "late_start")
        with pytest.raises(LoadTimedOut):
            await sink.load(spec, target, metadata(902), csv(tmp_path, ROWS), deadline_seconds=0.2)

    asyncio.run(load_cut_off())  # its loop is closed now, with the start still held
    (starter,) = [t for t in set(threading.enumerate()) - before if t.name == "snowflake-thread-starter"]
    release.set()
    asyncio.run(sink.close(1))  # asks the starter to end, after the refused start
    starter.join(30)
    assert not starter.is_alive()
    assert [(args.thread.name if args.thread else None, repr(args.exc_value)) for args in escaped] == []
    assert sink.loads_in_flight == 0


async def test_a_killed_claim_blocks_only_its_own_table_and_its_adopter_ends_it(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """(b): a claim whose process dies inside its load transaction leaves it open with the table's lock (Snowflake
    aborts it after 5 idle minutes while it blocks someone). Loads into the schema's other tables go on without
    waiting; the run's adopter ends that transaction and lands the run once, with exact rows, at once."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    files = csv(tmp_path, ROWS)
    held, thawed = asyncio.Event(), asyncio.Event()

    async def dies_before_commit() -> None:  # its process is gone (frozen here, so the test can end it)
        held.set()
        await thawed.wait()

    dead = SnowflakeSink(SETTINGS, RETRY)
    alive = SnowflakeSink(SETTINGS, RETRY)
    victim = LoadTarget(spec.database, "AMC", "victim")
    dying = asyncio.create_task(dead.load(spec, victim, metadata(400), files, fence=dies_before_commit))
    await asyncio.wait_for(held.wait(), 30)
    others = [LoadTarget(spec.database, "AMC", f"neighbour{n}") for n in range(3)]
    await asyncio.wait_for(
        asyncio.gather(*(alive.load(spec, t, metadata(410 + n), files) for n, t in enumerate(others))), 30
    )
    assert sum(usage(emulator, 410 + n)["lock_waits"] for n in range(3)) == 0
    started = time.monotonic()
    adopted = await asyncio.wait_for(alive.load(spec, victim, replace(metadata(400), claim=2), files), 60)
    assert time.monotonic() - started < 30
    assert adopted.rows == 3 and not adopted.already_loaded
    assert query(spec, f"SELECT COUNT(*), MIN(recomamp_run_id) FROM {spec.database}.AMC.VICTIM") == [(3, 400)]
    thawed.set()  # were it to come back, it would commit nothing: its transaction was ended
    with pytest.raises(LoadSuperseded):
        await asyncio.wait_for(dying, 60)
    assert query(spec, f"SELECT COUNT(*) FROM {spec.database}.AMC.VICTIM") == [(3,)]
    await alive.close(5)
    await dead.close(5)


async def test_an_adopter_ends_its_dead_claim_even_when_every_load_thread_waits_on_that_claim(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """A load of another run into the dead claim's table takes the only load thread and waits on its lock. The
    adopter ends the dead claim before it waits for a thread: had it waited first, both would sit until
    Snowflake aborts the detached transaction (5 idle minutes while it blocks), as in a kill storm."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    files = csv(tmp_path, ROWS)
    held, thawed = asyncio.Event(), asyncio.Event()

    async def dies_before_commit() -> None:
        held.set()
        await thawed.wait()

    dead = SnowflakeSink(SETTINGS, RETRY)
    one_thread = SnowflakeSink(SETTINGS.model_copy(update={"thread_pool_size": 1}), RETRY)
    crowded = LoadTarget(spec.database, "AMC", "crowded")
    dying = asyncio.create_task(dead.load(spec, crowded, metadata(420), files, fence=dies_before_commit))
    await asyncio.wait_for(held.wait(), 30)
    neighbour = asyncio.create_task(
        one_thread.load(spec, crowded, replace(metadata(421, execution="exec-421"), schedule_id=8), files)
    )

    async def neighbour_waits_on_the_lock() -> None:
        while not any(t["name"] == "RECOMAMP_R421_C1" and t["busy"] for t in emulator.transactions()):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(neighbour_waits_on_the_lock(), 30)
    adopted, landed = await asyncio.wait_for(
        asyncio.gather(one_thread.load(spec, crowded, replace(metadata(420), claim=2), files), neighbour), 60
    )
    assert (adopted.rows, landed.rows) == (3, 3)
    assert query(spec, f"SELECT recomamp_run_id, COUNT(*) FROM {spec.database}.AMC.CROWDED GROUP BY 1 ORDER BY 1") == [
        (420, 3),
        (421, 3),
    ]
    thawed.set()
    with pytest.raises(LoadSuperseded):
        await asyncio.wait_for(dying, 60)
    await one_thread.close(5)
    await dead.close(5)


async def test_a_load_into_an_unchanged_table_sends_at_most_eight_statements_and_no_warehouse_metadata(
    emulator: FakeSnowflake, spec: SnowflakeConnectionSpec, tmp_path: Path
) -> None:
    """Every statement is a round trip to Snowflake's cloud services; information_schema needs a warehouse,
    DESC does not. The counts for each case are in README ("Snowflake: round trips per load")."""
    query(spec, "SELECT 1")  # connecting creates the database on the emulator
    sink = SnowflakeSink(SETTINGS, RETRY)
    target = LoadTarget(spec.database, "AMC", "cheap")
    keyed = LoadTarget(spec.database, "AMC", "cheap_keyed", key_columns=("event_date", "campaign_id"))
    files = csv(tmp_path / "a", ROWS)
    wider = csv(tmp_path / "b", [f"{HEADER},clicks", "2026-11-01,1001,Brand A,1500.5,,3"])
    runs = {"new table": (target, 500, files), "unchanged": (target, 501, files)}
    runs |= {"new column and widening": (target, 502, wider), "keyed, new": (keyed, 503, files)}
    runs |= {"keyed, unchanged": (keyed, 504, files)}
    counts = {}
    for case, (where, run_id, result) in runs.items():
        await sink.load(spec, where, metadata(run_id, execution=f"exec-{run_id}"), result)
        counts[case] = usage(emulator, run_id)
    await sink.close(5)
    assert counts["unchanged"]["statements"] <= 8, counts
    assert all(c["information_schema_queries"] == 0 for c in counts.values()), counts
    # Only the DELETE, the ledger's INSERT and the COPY need a warehouse when nothing changed.
    assert counts["unchanged"]["warehouse_statements"] == 3, counts["unchanged"]
    # Quoted in docs/how-it-works.md ("Round trips per load"): `pytest -s` prints them.
    print(json.dumps({case: (c["statements"], c["warehouse_statements"]) for case, c in counts.items()}))
