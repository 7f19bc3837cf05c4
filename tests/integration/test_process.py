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

from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.daemon.process import Daemon
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
    await asyncio.sleep(1.6)  # the dead replica's leases run out
    assert await Daemon(load_config(path), once=True).run() == 0
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
        assert await asyncio.wait_for(process.wait(), 15) == 0
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
