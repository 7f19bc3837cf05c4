"""The Snowflake emulator follows Snowflake's documented behaviour (../shared/SNOWFLAKE_NOTES.md), through the real
connector. Each test states the fact it checks; none of them uses recomamp's loader."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import snowflake.connector
from snowflake.connector.errors import ProgrammingError

from recomamp.sandbox.embedded import FakeSnowflake, start_fakesnow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSnowflake]:
    """An emulator of this module's own: its tests change its settings."""
    server = start_fakesnow(log_path=tmp_path_factory.mktemp("emulator") / "emulator.log")
    yield server
    server.stop()


@pytest.fixture
def database(emulator: FakeSnowflake) -> str:
    name = f"EMU_{uuid.uuid4().hex[:8].upper()}"
    with connect(emulator) as connection:
        cursor = connection.cursor()
        cursor.execute(f"CREATE DATABASE {name}")
        cursor.execute(f"CREATE SCHEMA {name}.S")
        cursor.execute(f"CREATE TABLE {name}.S.T (ID NUMBER(38,0), V VARCHAR)")
        cursor.execute(f"INSERT INTO {name}.S.T VALUES (1, 'a'), (2, 'b')")
    return name


def connect(
    emulator: FakeSnowflake, *, lock_timeout: int = 60, user: str = "LOADER", tag: str = "", database: str | None = None
) -> Any:
    return snowflake.connector.connect(
        **({"database": database} if database else {}),
        account="emulated",
        user=user,
        password="pw",
        host=emulator.host,
        port=emulator.port,
        protocol="http",
        network_timeout=60,
        session_parameters={"LOCK_TIMEOUT": lock_timeout, "QUERY_TAG": tag},
    )


def run(connection: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = connection.cursor()
    cursor.execute(sql)
    return list(cursor.fetchall())


class Background:
    """One statement on another thread, so the test can see whether it waits."""

    def __init__(self, connection: Any, sql: str) -> None:
        self.result: list[tuple[Any, ...]] | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.finished: float | None = None
        self._thread = threading.Thread(target=self._run, args=(connection, sql), daemon=True)
        self._thread.start()

    def _run(self, connection: Any, sql: str) -> None:
        try:
            self.result = run(connection, sql)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished = time.monotonic()

    def join(self, timeout: float = 30) -> Background:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the statement still waited after {timeout} s"
        return self

    @property
    def done(self) -> bool:
        return self.finished is not None


def test_a_delete_locks_the_whole_table_until_commit_and_an_insert_is_not_blocked(
    emulator: FakeSnowflake, database: str
) -> None:
    """[published] UPDATE, DELETE and MERGE lock the whole table to the end of the transaction; INSERT runs beside."""
    with connect(emulator) as holder, connect(emulator) as other, connect(emulator) as inserter:
        run(holder, "BEGIN")
        run(holder, f"DELETE FROM {database}.S.T WHERE ID = 1")
        blocked = Background(other, f"UPDATE {database}.S.T SET V = 'z' WHERE ID = 2")  # another row, same table
        run(inserter, f"INSERT INTO {database}.S.T VALUES (3, 'c')")  # returns while the lock is held
        time.sleep(1.0)
        assert not blocked.done, "an UPDATE of another row ran while a DELETE's transaction held the table"
        run(holder, "COMMIT")
        blocked.join()
        assert blocked.error is None
        assert run(holder, f"SELECT ID, V FROM {database}.S.T ORDER BY ID") == [(2, "z"), (3, "c")]


def test_a_waiter_fails_with_625_past_its_lock_timeout(emulator: FakeSnowflake, database: str) -> None:
    """[published] A statement waits up to LOCK_TIMEOUT seconds, then fails with 000625."""
    with connect(emulator) as holder, connect(emulator, lock_timeout=1) as waiter:
        run(holder, "BEGIN")
        run(holder, f"DELETE FROM {database}.S.T WHERE ID = 1")
        started = time.monotonic()
        with pytest.raises(ProgrammingError) as refused:
            run(waiter, f"DELETE FROM {database}.S.T WHERE ID = 2")
        assert refused.value.errno == 625
        assert refused.value.sqlstate == "57014"
        assert time.monotonic() - started >= 0.9
        run(holder, "ROLLBACK")
        run(waiter, f"DELETE FROM {database}.S.T WHERE ID = 2")  # the lock is free again


def test_past_the_waiter_limit_a_statement_fails_with_625_at_once(emulator: FakeSnowflake, database: str) -> None:
    """[clients] Past about 20 waiters on one lock the next statement fails with 000625 at once (2 here)."""
    with emulator.configured(lock_waiter_limit=2):
        connections = [connect(emulator) for _ in range(4)]
        try:
            holder, *others = connections
            run(holder, "BEGIN")
            run(holder, f"DELETE FROM {database}.S.T WHERE ID = 1")
            waiting = [Background(c, f"DELETE FROM {database}.S.T WHERE ID = 2") for c in others[:2]]
            time.sleep(0.5)
            started = time.monotonic()
            with pytest.raises(ProgrammingError) as refused:
                run(others[2], f"DELETE FROM {database}.S.T WHERE ID = 2")
            assert refused.value.errno == 625
            assert "exceeds the 2 statements limit" in str(refused.value)
            assert time.monotonic() - started < 2.0
            assert not any(w.done for w in waiting)
            run(holder, "COMMIT")
            assert all(w.join().error is None for w in waiting)
        finally:
            for connection in connections:
                connection.close()


def test_ddl_inside_a_transaction_commits_it_first(emulator: FakeSnowflake, database: str) -> None:
    """[published] Every DDL statement first commits the open transaction."""
    with connect(emulator) as connection:
        run(connection, "BEGIN")
        run(connection, f"INSERT INTO {database}.S.T VALUES (9, 'kept')")
        run(connection, f"CREATE TABLE {database}.S.OTHER (X NUMBER)")
        run(connection, "ROLLBACK")  # nothing left to roll back
        assert run(connection, f"SELECT V FROM {database}.S.T WHERE ID = 9") == [("kept",)]


def test_a_client_that_vanishes_keeps_its_locks_until_idle_while_blocking(
    emulator: FakeSnowflake, database: str
) -> None:
    """[published] An abrupt disconnect leaves the transaction detached with its locks; Snowflake aborts it once it
    blocks a statement and has been idle 5 minutes (1.5 s here). A clean close rolls back and releases at once."""
    with emulator.configured(blocking_idle_abort_seconds=1.5):
        vanished = connect(emulator)  # never closed: its process "died"
        run(vanished, "BEGIN")
        run(vanished, f"DELETE FROM {database}.S.T WHERE ID = 1")
        time.sleep(2.0)  # idle, but blocking nobody: still open, its lock held
        assert [t["tables"] for t in emulator.transactions()] == [[f"{database}.S.T"]]
        with connect(emulator) as other:
            # Idle for longer than the limit already: the first statement it blocks ends it at once.
            prompt = Background(other, f"DELETE FROM {database}.S.T WHERE ID = 2").join()
            assert prompt.error is None
            assert prompt.finished is not None and prompt.finished - prompt.started < 1.2
            assert run(other, f"SELECT ID FROM {database}.S.T") == [(1,)]  # the vanished DELETE rolled back
        with pytest.raises(ProgrammingError) as aborted:
            run(vanished, "COMMIT")
        assert "was aborted" in str(aborted.value)
        second = connect(emulator)
        run(second, "BEGIN")
        run(second, f"DELETE FROM {database}.S.T")
        with connect(emulator) as other:
            blocked = Background(other, f"INSERT INTO {database}.S.T VALUES (5, 'e')")  # INSERT: not blocked
            blocked.join()
            waiter = Background(other, f"DELETE FROM {database}.S.T WHERE ID = 5").join()
            assert waiter.error is None
            assert waiter.finished is not None and waiter.finished - waiter.started >= 1.2
            assert run(other, f"SELECT ID FROM {database}.S.T") == [(1,)]
    closing = connect(emulator)
    run(closing, "BEGIN")
    run(closing, f"DELETE FROM {database}.S.T")
    closing.close()
    with connect(emulator, lock_timeout=2) as other:
        run(other, f"DELETE FROM {database}.S.T WHERE ID = 1")
        assert run(other, f"SELECT ID FROM {database}.S.T") == []


def test_a_named_transaction_is_listed_and_can_be_aborted_by_another_session(
    emulator: FakeSnowflake, database: str
) -> None:
    """[published] BEGIN NAME, CURRENT_TRANSACTION(), SHOW TRANSACTIONS (the current user's) and
    SYSTEM$ABORT_TRANSACTION, which ends a transaction and its locks at once."""
    with connect(emulator) as owner, connect(emulator) as rescuer, connect(emulator, user="SOMEONE_ELSE") as stranger:
        assert run(owner, "SELECT CURRENT_TRANSACTION()") == [(None,)]
        run(owner, "BEGIN NAME RECOMAMP_TEST_1")
        (current,) = run(owner, "SELECT CURRENT_TRANSACTION()")[0]
        run(owner, f"DELETE FROM {database}.S.T WHERE ID = 1")
        listed = {row[3]: row for row in run(rescuer, "SHOW TRANSACTIONS")}
        assert listed["RECOMAMP_TEST_1"][0] == current
        assert listed["RECOMAMP_TEST_1"][5] == "running"
        assert "RECOMAMP_TEST_1" not in {row[3] for row in run(stranger, "SHOW TRANSACTIONS")}
        waiter = Background(rescuer, f"DELETE FROM {database}.S.T WHERE ID = 2")
        time.sleep(0.5)
        assert not waiter.done
        with connect(emulator) as third:
            run(third, f"SELECT SYSTEM$ABORT_TRANSACTION({current})")
        assert waiter.join(5).error is None
        with pytest.raises(ProgrammingError, match="was aborted"):
            run(owner, "COMMIT")
        assert run(owner, f"SELECT ID FROM {database}.S.T") == [(1,)]  # its DELETE undone, the rescuer's done


def test_a_statement_sees_what_was_committed_before_it_ran(emulator: FakeSnowflake, database: str) -> None:
    """[published] READ COMMITTED: a transaction's first statement sees commits made after its BEGIN."""
    with connect(emulator) as reader, connect(emulator) as writer:
        run(reader, "BEGIN")
        run(writer, f"INSERT INTO {database}.S.T VALUES (7, 'late')")
        assert run(reader, f"SELECT V FROM {database}.S.T WHERE ID = 7") == [("late",)]
        run(reader, "COMMIT")


def parquet_file(path: Path) -> Path:
    table = pa.table(
        {
            "ID": pa.array([1], pa.int64()),
            "SEEN_AT": pa.array([dt.datetime(2026, 11, 3, 4, 5, 6)], pa.timestamp("us")),
            "DAY": pa.array([dt.date(2026, 11, 3)], pa.date32()),
        }
    )
    pq.write_table(table, path)
    assert pq.ParquetFile(path).schema.column(1).converted_type == "NONE"  # as pyarrow writes it
    return path


def test_parquet_timestamps_without_a_converted_type_need_use_logical_type(
    emulator: FakeSnowflake, database: str, tmp_path: Path
) -> None:
    """[published] Without USE_LOGICAL_TYPE = TRUE a TIMESTAMP with no ConvertedType is read as an INTEGER (into a
    timestamp column: microseconds taken as seconds, year ~55 million); with it, as TIMESTAMP_NTZ. Dates read
    right either way."""
    path = parquet_file(tmp_path / "f.parquet")
    with connect(emulator, database=database) as connection:
        run(connection, f"CREATE TABLE {database}.S.TS (ID NUMBER(38,0), SEEN_AT TIMESTAMP_NTZ, DAY DATE)")
        run(connection, f"CREATE TABLE {database}.S.TXT (ID NUMBER(38,0), SEEN_AT VARCHAR, DAY DATE)")
        run(connection, f"CREATE TEMPORARY STAGE {database}.S.STG")
        run(connection, f"PUT 'file://{path}' @{database}.S.STG/p/ AUTO_COMPRESS=FALSE")
        copy = (
            "COPY INTO {table} FROM @{db}.S.STG/p/ FILE_FORMAT=(TYPE=PARQUET{extra}) "
            "MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE"
        )
        with pytest.raises(ProgrammingError, match="USE_LOGICAL_TYPE"):
            run(connection, copy.format(table=f"{database}.S.TS", db=database, extra=""))
        assert run(connection, f"SELECT COUNT(*) FROM {database}.S.TS") == [(0,)]
        run(connection, copy.format(table=f"{database}.S.TXT", db=database, extra=""))
        micros = str(int(dt.datetime(2026, 11, 3, 4, 5, 6, tzinfo=dt.UTC).timestamp()) * 1_000_000)
        assert run(connection, f"SELECT SEEN_AT, DAY FROM {database}.S.TXT") == [(micros, dt.date(2026, 11, 3))]
        run(connection, copy.format(table=f"{database}.S.TS", db=database, extra=" USE_LOGICAL_TYPE=TRUE"))
        assert run(connection, f"SELECT SEEN_AT, DAY FROM {database}.S.TS") == [
            (dt.datetime(2026, 11, 3, 4, 5, 6), dt.date(2026, 11, 3))
        ]


def test_a_copy_that_finds_no_file_succeeds_and_loads_nothing(emulator: FakeSnowflake, database: str) -> None:
    """[published] ON_ERROR aside, a COPY that finds no files succeeds with nothing loaded."""
    with connect(emulator, database=database) as connection:
        run(connection, f"CREATE TEMPORARY STAGE {database}.S.EMPTY")
        rows = run(
            connection,
            f"COPY INTO {database}.S.T FROM @{database}.S.EMPTY/none/ FILE_FORMAT=(TYPE=PARQUET USE_LOGICAL_TYPE=TRUE) "
            "MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE",
        )
        assert rows == [("Copy executed with 0 files processed.",)]
        assert run(connection, f"SELECT COUNT(*) FROM {database}.S.T") == [(2,)]


def test_statements_cost_their_latency_and_only_some_need_a_warehouse(
    emulator: FakeSnowflake, database: str, tmp_path: Path
) -> None:
    """[published] Information Schema views need a running warehouse; SHOW and DESC are metadata operations, and
    neither PUT, DDL nor transaction control runs on a warehouse. Every statement is a round trip."""
    path = parquet_file(tmp_path / "f.parquet")
    tag = f"tag-{uuid.uuid4().hex[:6]}"
    with emulator.configured(statement_latency_ms=100), connect(emulator, tag=tag, database=database) as connection:
        started = time.monotonic()
        for sql in (
            f"DESC TABLE {database}.S.T",
            f"SHOW TABLES LIKE 'T' IN SCHEMA {database}.S",
            f"CREATE TEMPORARY STAGE {database}.S.COST",
            f"PUT 'file://{path}' @{database}.S.COST/p/ AUTO_COMPRESS=FALSE",
            "BEGIN",
            "COMMIT",
            "SELECT CURRENT_VERSION()",
        ):
            run(connection, sql)
        free = emulator.account()["by_query_tag"][tag]
        assert free["statements"] == 7, free["by_kind"]
        assert free["warehouse_statements"] == 0
        assert free["warehouse_seconds"] == 0
        assert time.monotonic() - started >= 0.7
        run(connection, f"SELECT COUNT(*) FROM {database}.S.T")
        run(connection, f"SELECT column_name FROM {database}.information_schema.columns WHERE table_name = 'T'")
        run(connection, f"DELETE FROM {database}.S.T WHERE ID = 2")
        paid = emulator.account()["by_query_tag"][tag]
        assert paid["statements"] == 10
        assert paid["warehouse_statements"] == 3
        assert paid["information_schema_queries"] == 1
        assert paid["warehouse_seconds"] >= 0.3
