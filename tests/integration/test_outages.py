"""Months of uptime: the database away for longer than the watchdog, a Snowflake that stops answering, a full
spool disk, and key rotation while the daemon runs. Nothing is lost, nothing runs twice, the daemon never exits."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from recomamp import wiring
from recomamp.amazon import results
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.sandbox.embedded import FakeSnowflake, start_fakesnow
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services.keys import rotate
from recomamp.services.runs import retry_upload
from recomamp.store.db import create_pool
from recomamp.systemd import Notifier
from recomamp.testing import LogCapture, capture_logs
from recomamp.wiring import open_services
from tests.conftest import ConfigWriter
from tests.integration.conftest import OwnPostgres, migrated_database
from tests.integration.world import (
    add_due_schedule,
    add_snowflake,
    add_tenant,
    snowflake_rows,
    wait_until,
    write_world_config,
)

pytestmark = pytest.mark.slow


class NotifySocket:
    """A fake $NOTIFY_SOCKET that reads what it is sent as it arrives, as systemd does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        self.messages: list[str] = []
        asyncio.get_running_loop().add_reader(self._socket.fileno(), self.drain)

    def drain(self) -> list[str]:
        try:
            while True:
                self.messages.append(self._socket.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.messages

    def count(self, text: str) -> int:
        return sum(text in m for m in self.drain())

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._socket.fileno())
        self._socket.close()


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture
def log_stream() -> Iterator[LogCapture]:
    with capture_logs() as captured:
        yield captured


async def statuses(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return [r["status"] for r in await connection.fetch("SELECT status FROM schedule_runs ORDER BY id")]
    finally:
        await connection.close()


async def test_a_database_outage_longer_than_the_watchdog_is_waited_out(
    own_postgres: OwnPostgres,
    simulator: AmcSimulator,
    box: SecretBox,
    write_config: ConfigWriter,
    notify_socket: NotifySocket,
    log_stream: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = await migrated_database(own_postgres.admin_dsn)
    pool = await create_pool(dsn, size=4, command_timeout=10, connect_timeout=5)
    try:
        tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcO")
        for n in range(4):
            await add_due_schedule(pool, tenant, f"s{n}")
    finally:
        await pool.close()
    simulator.default_profile.running_seconds = 3  # they poll AMC through the outage
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # WatchdogSec=2s: fed every second
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    config = load_config(
        write_world_config(write_config, dsn, simulator, lease_seconds=6.0, run_retry_delay_seconds=0.5)
    )
    daemon = wiring.daemon(config, notifier=Notifier(str(notify_socket.path)))
    serving = asyncio.create_task(daemon.run())
    try:
        await wait_until(lambda: len(simulator.executions) == 4, what="4 runs to be submitted")
        await asyncio.to_thread(own_postgres.stop)
        before = notify_socket.count("WATCHDOG=1")
        # Five feeds (every second) without a database: longer than WatchdogSec=2s, however slow the machine.
        await wait_until(
            lambda: notify_socket.count("WATCHDOG=1") - before >= 5, what="five watchdog feeds without a database"
        )
        assert not serving.done()  # never exits for it
        assert any("database unreachable" in m for m in notify_socket.drain())  # STATUS says so
        await asyncio.to_thread(own_postgres.start)
        await wait_until(lambda: _all(dsn, "succeeded", 4), seconds=40, what="every run to succeed after the outage")
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(serving, 30) == 0
    assert simulator.calls["create_execution"] == 4  # one execution each, through it all
    assert len(log_stream.events("database_unreachable")) == 1  # one line per change of state
    assert len(log_stream.events("database_reachable_again")) >= 1


async def _all(dsn: str, status: str, count: int) -> bool:
    try:
        found = await statuses(dsn)
    except (OSError, asyncpg.PostgresError):
        return False
    return found.count(status) == count


async def test_a_daemon_started_while_the_database_is_down_waits_and_sends_ready_only_when_it_answers(
    own_postgres: OwnPostgres,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = await migrated_database(own_postgres.admin_dsn)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    await asyncio.to_thread(own_postgres.stop)
    config = load_config(write_world_config(write_config, dsn, simulator))
    daemon = wiring.daemon(config, notifier=Notifier(str(notify_socket.path)))
    serving = asyncio.create_task(daemon.run())
    try:
        # Two watchdog intervals and more of waiting: it says why, and waiting is not hanging.
        await wait_until(
            lambda: (
                notify_socket.count("WATCHDOG=1") >= 2 and notify_socket.count("STATUS=waiting for the database at") > 0
            ),
            what="the watchdog fed twice and STATUS saying it waits for the database",
        )
        assert not serving.done()
        assert not any("READY=1" in m for m in notify_socket.drain())
        await asyncio.to_thread(own_postgres.start)
        await wait_until(lambda: notify_socket.count("READY=1") >= 1, seconds=30, what="READY=1")
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(serving, 30) == 0


@pytest.fixture
def own_fakesnow(tmp_path: Path) -> Iterator[FakeSnowflake]:
    server = start_fakesnow(log_path=tmp_path / "fakesnow.log")
    yield server
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


async def _rows(snow: FakeSnowflake, database: str, table: str) -> tuple[int, int]:
    (row,) = await snowflake_rows(
        snow, database, f'SELECT COUNT(*), COUNT(DISTINCT (EVENT_DATE, CAMPAIGN_ID)) FROM AMC."{table}"'
    )
    return int(row[0]), int(row[1])


async def test_a_snowflake_that_stops_answering_is_cut_off_at_the_deadline_then_retry_upload_lands_it(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    own_fakesnow: FakeSnowflake,
    write_config: ConfigWriter,
) -> None:
    database = f"HUNG_{uuid.uuid4().hex[:8].upper()}"
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcH")
    await add_snowflake(pool, box, tenant, own_fakesnow.host, own_fakesnow.port, database)
    await add_due_schedule(pool, tenant, "hung", table="hung_results")
    simulator.default_profile.running_seconds = 1.0
    path = write_world_config(write_config, db_dsn, simulator)
    path.write_text(path.read_text().replace("[snowflake]", "[snowflake]\nload_timeout_seconds = 3.0"))
    config = load_config(path)
    serving = asyncio.create_task(wiring.daemon(config, once=True).run())
    await wait_until(lambda: len(simulator.executions) == 1, what="the run to be submitted")
    own_fakesnow.process.send_signal(signal.SIGSTOP)  # Snowflake hangs: connections open, nothing answers
    try:
        assert await asyncio.wait_for(serving, 30) == 1
    finally:
        own_fakesnow.process.send_signal(signal.SIGCONT)
    run = await pool.fetchrow("SELECT * FROM schedule_runs")
    assert run is not None
    assert (run["status"], run["error_kind"], run["snowflake_status"]) == ("failed", "snowflake", "failed")
    assert "did not finish within 3 s" in run["error_message"]
    assert f"recomamp runs retry-upload {run['id']}" in run["error_message"]
    # The hung thread wakes up now: it must commit nothing. Then retry-upload lands the exact rows, once.
    await asyncio.sleep(2)
    async with open_services(config, replica="cli") as services:
        await retry_upload(services, config, run["id"], owner="retry-upload:test")
    assert await _rows(own_fakesnow, database, "HUNG_RESULTS") == (120, 120)


async def test_a_full_spool_disk_defers_with_where_and_how_much_room_and_downloads_nothing_twice(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    monkeypatch: pytest.MonkeyPatch,
    log_stream: LogCapture,
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcS")
    await add_due_schedule(pool, tenant, "spool")
    original = results._PartWriter.write
    failures = iter([True])

    def full_disk_on_the_second_part(self: results._PartWriter, chunk: bytes) -> None:
        if self.path.name == results.part_name(1) and next(failures, False):
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, chunk)

    monkeypatch.setattr(results._PartWriter, "write", full_disk_on_the_second_part)
    config = load_config(write_world_config(write_config, db_dsn, simulator, run_retry_delay_seconds=0.3))
    daemon = wiring.daemon(config)
    serving = asyncio.create_task(daemon.run())
    try:
        await wait_until(lambda: _all(db_dsn, "succeeded", 1), seconds=30, what="the run to succeed")
    finally:
        daemon.request_stop()
        assert await serving == 0
    (deferred,) = log_stream.events("run_deferred")
    assert deferred["error_kind"] == "spool"
    assert f"disk full at {config.daemon.spool_dir}" in str(deferred["message"])
    assert "MB free)" in str(deferred["message"])
    # Part 0 was complete and kept; part 1 was fetched again, part 2 once: four fetches for three parts.
    assert simulator.calls["download_file"] == 4
    assert not list(config.daemon.spool_dir.rglob("*.partial"))


async def test_keys_rotate_while_the_daemon_runs_and_every_user_still_refreshes_after_the_old_key_is_dropped(
    pool: asyncpg.Pool,
    db_dsn: str,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    token_key: str,
) -> None:
    old_box = SecretBox([SecretStr(token_key)])
    tenants = [await add_tenant(pool, old_box, simulator, f"u{i}@example.com", f"amcK{i}") for i in range(3)]
    path = write_world_config(write_config, db_dsn, simulator)
    key_file = write_config.directory / "token.key"
    daemon = wiring.daemon(load_config(path), config_path=path)
    serving = asyncio.create_task(daemon.run())
    try:
        for tenant in tenants:
            await add_due_schedule(pool, tenant, f"before {tenant.email}")
        await wait_until(lambda: _all(db_dsn, "succeeded", 3), what="the first runs")
        # 1. The new key first, the old one kept; reload.
        new_key = Fernet.generate_key().decode()
        key_file.write_text(f"{new_key}\n{token_key}\n")
        assert (await daemon.reload()).applied is True
        # 2. Re-encrypt everything with the new key.
        async with pool.acquire() as connection:
            report = await rotate(connection, SecretBox([SecretStr(new_key), SecretStr(token_key)]))
        assert report.unreadable == 0 and report.reencrypted >= 6  # a refresh and an access token per user
        # 3. Drop the old key; reload. Every user must still refresh (their access tokens are gone at Amazon).
        key_file.write_text(f"{new_key}\n")
        assert (await daemon.reload()).applied is True
        simulator.expire_access_tokens()
        await pool.execute("UPDATE users SET access_token_expires_at = now() - interval '1 second'")
        for tenant in tenants:
            await add_due_schedule(pool, tenant, f"after {tenant.email}")
        await wait_until(lambda: _all(db_dsn, "succeeded", 6), what="every user's run after the rotation")
    finally:
        daemon.request_stop()
        assert await serving == 0
    new_only = SecretBox([SecretStr(key_file.read_text().strip())])
    for row in await pool.fetch("SELECT refresh_token_encrypted FROM users"):
        new_only.decrypt(row["refresh_token_encrypted"])  # readable without the old key
