"""`recomamp run` as a real process: SIGKILL recovery, SIGTERM drain, SIGHUP, sd_notify."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.sandbox.simulator import AmcSimulator
from tests.conftest import ConfigWriter
from tests.integration.world import add_due_schedule, add_tenant, execution_submitted, wait_until, write_world_config


async def _start(config: Path, log: Path, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    with log.open("wb") as output:  # the child keeps its own descriptor
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "recomamp",
            "run",
            "--config",
            str(config),
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


async def leases_expired(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT count(*) = 0 FROM schedule_runs WHERE lease_expires_at > now()"))


@pytest.fixture
async def four_long_runs(pool: asyncpg.Pool, box: SecretBox, simulator: AmcSimulator) -> None:
    simulator.default_profile.running_seconds = 120  # polling goes on until the test lets them finish
    tenants = [await add_tenant(pool, box, simulator, f"k{i}@example.com", f"amcK{i}") for i in range(2)]
    for i in range(4):
        await add_due_schedule(pool, tenants[i % 2], f"long {i}")


@pytest.mark.usefixtures("four_long_runs")
async def test_sigkill_while_polling_then_a_fresh_daemon_finishes_without_a_second_post(
    pool: asyncpg.Pool, db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, tmp_path: Path
) -> None:
    path = write_world_config(write_config, db_dsn, simulator, lease_seconds=1.5, heartbeat_interval_seconds=0.5)
    process = await _start(path, tmp_path / "killed.log")
    await wait_until(lambda: execution_submitted(pool, 4), what="4 runs to be submitted")
    process.send_signal(signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL
    assert simulator.calls["create_execution"] == 4
    for execution in simulator.executions.values():
        execution.profile.running_seconds = 0  # AMC finishes them while nobody watches
    # The dead replica's leases run out (1.5 s after its last renewal): wait for that, not for a guess of it.
    await wait_until(
        lambda: leases_expired(pool), seconds=30, what="the killed replica's leases to expire in the database"
    )
    assert await wiring.daemon(load_config(path), once=True).run() == 0
    rows = await pool.fetch("SELECT status, attempt, claims, interruptions FROM schedule_runs")
    # Each was interrupted once (the kill) after it had advanced: adopted, not counted as a second attempt.
    assert [(r["status"], r["attempt"], r["claims"], r["interruptions"]) for r in rows] == [("succeeded", 1, 2, 1)] * 4
    assert simulator.calls["create_execution"] == 4  # adopted and polled, never submitted again


@pytest.mark.usefixtures("four_long_runs")
async def test_sigterm_drains_releases_leases_and_notifies_systemd(
    pool: asyncpg.Pool, db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.setblocking(False)
    messages: list[str] = []

    async def received(text: str) -> bool:
        try:
            while True:
                messages.append(listener.recv(4096).decode())
        except BlockingIOError:
            pass
        return any(text in m for m in messages)

    path = write_world_config(write_config, db_dsn, simulator, drain_timeout_seconds=0.5)
    process = await _start(
        path, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    )
    try:
        await wait_until(lambda: received("READY=1"), what="READY=1")
        await wait_until(lambda: execution_submitted(pool, 4), what="4 runs to be submitted")
        process.send_signal(signal.SIGHUP)
        await wait_until(lambda: received("RELOADING=1"), what="RELOADING=1")
        reloading = next(m for m in messages if "RELOADING=1" in m)
        assert "MONOTONIC_USEC=" in reloading
        await wait_until(lambda: "config_reloaded" in (tmp_path / "daemon.log").read_text(), what="config_reloaded")
        process.send_signal(signal.SIGTERM)
        # A 0.5 s drain; the deadline is generous (a loaded machine), and a drain that hangs still fails it.
        assert await asyncio.wait_for(process.wait(), 60) == 0
        await wait_until(lambda: received("STOPPING=1"), what="STOPPING=1")
    finally:
        if process.returncode is None:
            process.kill()
        listener.close()
    assert any("STATUS=" in m for m in messages)
    assert any(m == "WATCHDOG=1" for m in messages)  # fed by the poll loop while it makes progress
    rows = await pool.fetch("SELECT status, step, lease_owner FROM schedule_runs")
    assert [(r["status"], r["step"], r["lease_owner"]) for r in rows] == [("pending", "submitted", None)] * 4
    lines = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "config_reloaded" in events
    (summary,) = [line for line in lines if line["event"] == "shutdown_complete"]
    assert summary["released"] == 4
    assert summary["summary"] == "0 runs succeeded, 0 failed, 0 deferred, 4 released for the next start"


class NotifySocket:
    """A fake $NOTIFY_SOCKET: what the daemon tells systemd, as a unit of Type=notify would hear it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        try:
            while True:
                self.messages.append(self._socket.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.messages

    def close(self) -> None:
        self._socket.close()


async def _refused_start(config: Path, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    """Start `recomamp run`, wait for it to exit: its code, what it told systemd, and its output."""
    notify = NotifySocket(tmp_path / "notify.sock")
    log = tmp_path / "refused.log"
    try:
        process = await _start(config, log, env={"NOTIFY_SOCKET": str(notify.path), **(env or {})})
        try:
            # Generous: the start is a second or two on an idle machine; the deadline only stops a hung test.
            code = await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
        return code, notify.received(), log.read_text()
    finally:
        notify.close()


async def test_a_second_daemon_on_a_taken_metrics_port_exits_before_ready_with_one_line(
    db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, tmp_path: Path
) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # the first replica's /metrics
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    listen = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        config = write_world_config(write_config, db_dsn, simulator)
        code, told_systemd, output = await _refused_start(config, tmp_path, env={"RECOMAMP_METRICS__LISTEN": listen})
    finally:
        taken.close()
    assert code == 78  # EX_CONFIG: the units' RestartPreventExitStatus= does not restart it
    assert not any("READY=1" in message for message in told_systemd)
    naming = [line for line in output.splitlines() if "[metrics] listen" in line]
    assert len(naming) == 1, output
    (line,) = naming
    assert json.loads(line)["event"] == "daemon_cannot_start"
    assert (
        json.loads(line)["reason"]
        == f'[metrics] listen {listen} is in use: set another port, or "" to turn metrics off'
    )
    assert "background_task_died" not in output and "daemon_ready" not in output


async def test_a_daemon_whose_control_socket_another_daemon_answers_on_exits_before_ready(
    db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, tmp_path: Path
) -> None:
    path = tmp_path / "control.sock"
    answering = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # the first replica's control socket
    answering.bind(str(path))
    answering.listen()
    try:
        config = write_world_config(write_config, db_dsn, simulator, control_socket=str(path))
        code, told_systemd, output = await _refused_start(config, tmp_path)
        assert path.exists()  # the first daemon keeps its socket: `recomamp reload` still reaches it
    finally:
        answering.close()
    assert code == 78  # EX_CONFIG: the units' RestartPreventExitStatus= does not restart it
    assert not any("READY=1" in message for message in told_systemd)
    naming = [line for line in output.splitlines() if "[daemon] control_socket" in line]
    assert len(naming) == 1, output
    assert f"[daemon] control_socket {path} is in use by another running daemon" in json.loads(naming[0])["reason"]


async def test_a_spool_that_cannot_be_written_stops_the_start_before_ready(
    db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"  # a file where the spool's parent directory should be: as root too, no mkdir
    blocker.write_text("")
    config = write_world_config(write_config, db_dsn, simulator, spool_dir=str(blocker / "spool"))
    code, told_systemd, output = await _refused_start(config, tmp_path)
    assert code == 78
    assert not any("READY=1" in message for message in told_systemd)
    (line,) = [json.loads(line) for line in output.splitlines() if "[daemon] spool_dir" in line]
    assert line["event"] == "daemon_cannot_start"
    assert line["reason"].startswith(f"[daemon] spool_dir {blocker / 'spool'} cannot be written (Not a directory)")
