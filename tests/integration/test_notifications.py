"""Alerts that reach a person: the outbox and its sender, against a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.sandbox.embedded import free_port
from recomamp.sandbox.simulator import AmcSimulator
from tests.conftest import ConfigWriter
from tests.integration.processes import Replica, stop_all
from tests.integration.test_cli import cli
from tests.integration.world import add_due_schedule, add_tenant, wait_until, write_world_config

SECRET_PATH = "T000/B000/hook-secret-4f9a"


@dataclass
class Receiver:
    """A webhook receiver that answers from a script (500, 500, then 200 …) and can go away and come back."""

    port: int = field(default_factory=free_port)
    script: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{SECRET_PATH}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(f"/{SECRET_PATH}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        status = self.script.pop(0) if self.script else 200
        if status != 200:
            self.refused += 1
            return web.Response(status=status, text="try later")
        self.bodies.append(await request.json())
        return web.Response(status=200, text="ok")

    def events(self, name: str) -> list[dict[str, Any]]:
        return [body for body in self.bodies if body.get("event") == name]


def with_webhook(path: Path, receiver: Receiver, **target: object) -> Path:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in target.items())
    path.write_text(
        path.read_text()
        + "\n[notify]\nmax_attempts = 50\nretry_waits = [0.3, 0.3, 0.5]\n\n"
        + f'[[notify.webhook]]\nname = "ops"\nurl = "{receiver.url}"\n{extra}'
    )
    return path


async def outbox_rows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in await pool.fetch("SELECT id, event, attempts, done_at, failed_at FROM notifications ORDER BY id")
    ]


async def test_three_replicas_deliver_one_reauth_alert_for_a_user_with_five_failing_schedules(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    await receiver.start()
    tenant = await add_tenant(pool, box, simulator, "bob@example.com", "amcR")
    for n in range(5):
        await add_due_schedule(pool, tenant, f"bob {n}")
    simulator.revoke("bob@example.com")
    config = with_webhook(write_world_config(write_config, db_dsn, simulator), receiver)
    replicas = [Replica(name, config, tmp_path) for name in ("a", "b", "c")]
    try:
        for replica in replicas:
            await replica.start()

        async def all_delivered() -> bool:
            rows = await outbox_rows(pool)
            return len(rows) >= 6 and all(row["done_at"] is not None for row in rows)

        await wait_until(all_delivered, seconds=60, what="the alerts to be delivered")
        await asyncio.sleep(2.0)  # time for a second delivery, were there one
    finally:
        await stop_all(replicas)
        await receiver.stop()
    assert len(receiver.events("user_needs_reauth")) == 1
    reauth = receiver.events("user_needs_reauth")[0]
    assert "recomamp users authorize bob@example.com" in reauth["text"]
    assert len(receiver.events("run_failed")) == 5  # one per schedule (each its own rate limit)
    assert Counter(body["id"] for body in receiver.bodies).most_common(1)[0][1] == 1  # nothing delivered twice
    for replica in replicas:
        for log in replica.logs:
            assert SECRET_PATH not in log.read_text()


async def test_an_alert_survives_500s_and_a_receiver_that_is_down_and_is_delivered_once(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from recomamp.logs import configure_logging

    configure_logging("info")
    receiver = Receiver(script=[500, 500])
    await receiver.start()
    first = await add_tenant(pool, box, simulator, "cy@example.com", "amcS")
    await add_due_schedule(pool, first, "cy daily")
    simulator.revoke("cy@example.com")
    path = with_webhook(
        write_world_config(write_config, db_dsn, simulator), receiver, events=["user_needs_reauth"], format="json"
    )
    daemon = wiring.daemon(load_config(path), config_path=path)
    serving = asyncio.create_task(daemon.run())
    try:
        # Two 500s, then the third try lands.
        await wait_until(lambda: bool(receiver.events("user_needs_reauth")), seconds=30, what="the first alert")
        assert receiver.refused == 2

        async def marked_delivered() -> bool:
            # The sender marks the row after the receiver's answer arrives: a moment after it is received.
            return any(r["done_at"] is not None for r in await outbox_rows(pool) if r["event"] == "user_needs_reauth")

        await wait_until(marked_delivered, seconds=30, what="the delivered alert marked done")
        (row,) = [r for r in await outbox_rows(pool) if r["event"] == "user_needs_reauth"]
        assert row["attempts"] == 3

        # The receiver goes away; an alert written meanwhile waits in the outbox and lands when it is back.
        await receiver.stop()
        second = await add_tenant(pool, box, simulator, "di@example.com", "amcT")
        await add_due_schedule(pool, second, "di daily")
        simulator.revoke("di@example.com")

        async def tried_while_down() -> bool:
            rows = [r for r in await outbox_rows(pool) if r["event"] == "user_needs_reauth"]
            return len(rows) == 2 and rows[1]["attempts"] >= 2 and rows[1]["done_at"] is None

        await wait_until(tried_while_down, seconds=30, what="the second alert to be tried while the receiver is down")
        await receiver.start()
        await wait_until(lambda: len(receiver.events("user_needs_reauth")) == 2, seconds=30, what="the second alert")
        await asyncio.sleep(1.0)
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(serving, 30) == 0
        await receiver.stop()
    assert [body["user_email"] for body in receiver.events("user_needs_reauth")] == [
        "cy@example.com",
        "di@example.com",
    ]
    out = capsys.readouterr().out
    assert '"notification_delivery_failed"' in out and SECRET_PATH not in out
    assert not receiver.events("run_failed")  # this target asked for user_needs_reauth only


async def test_notify_test_sends_to_every_target_and_says_what_each_answered(
    db_dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        path = with_webhook(write_world_config(write_config, db_dsn, simulator), receiver, format="slack")
        capsys.readouterr()
        assert await cli(path, "notify", "test") == 0
        out = capsys.readouterr().out
        assert "ops" in out and "ok: HTTP 200" in out and SECRET_PATH not in out
        assert receiver.bodies and set(receiver.bodies[0]) == {"text"}  # Slack's shape
        receiver.script = [503]
        assert await cli(path, "notify", "test") == 1
        assert "FAILED: HTTP 503" in capsys.readouterr().out
    finally:
        await receiver.stop()
    bad = write_world_config(write_config, db_dsn, simulator)
    bad.write_text(bad.read_text() + '\n[[notify.webhook]]\nname = "x"\nurl = "ftp://example.com/hook"\n')
    assert await cli(bad, "notify", "test") == 2
    err = capsys.readouterr().err
    assert "must be an http:// or https:// URL" in err and "ftp://example.com" not in err


async def test_a_broken_sender_is_logged_once_and_never_stops_the_daemon(
    db_dsn: str,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from recomamp.logs import configure_logging
    from recomamp.notify import sender

    configure_logging("info")
    calls = 0

    async def broken(*_: object, **__: object) -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug in the sender")

    monkeypatch.setattr(sender, "send_due", broken)
    path = with_webhook(write_world_config(write_config, db_dsn, simulator), Receiver())
    daemon = wiring.daemon(load_config(path), config_path=path)
    serving = asyncio.create_task(daemon.run())
    await wait_until(lambda: calls >= 3, seconds=60, what="the sender to fail a few times")
    assert not serving.done() and daemon.tasks_alive  # runs go on; the unit is not restarted
    daemon.request_stop()
    assert await asyncio.wait_for(serving, 30) == 0
    assert capsys.readouterr().out.count('"notifications_failed"') == 1  # once per change of state
