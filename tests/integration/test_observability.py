"""What an operator sees: /metrics (parsed with prometheus_client), /healthz and /readyz across a Postgres
outage, `recomamp status`, and the shipped alert rules under a real promtool and a real Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.daemon.process import Daemon
from recomamp.sandbox.embedded import free_port
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.store.db import create_pool
from tests.conftest import ConfigWriter
from tests.integration.conftest import OwnPostgres, migrated_database
from tests.integration.test_cli import cli
from tests.integration.world import add_due_schedule, add_tenant, wait_until, write_world_config

RULES = Path(__file__).resolve().parents[2] / "systemd" / "prometheus"
needs_prometheus = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("prometheus") is None,
    reason="Prometheus is not installed (.ci/run installs Debian's prometheus package)",
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


@contextlib.asynccontextmanager
async def serving(
    dsn: str, simulator: AmcSimulator, write_config: ConfigWriter, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Daemon, str, Path]]:
    port = free_port()
    monkeypatch.setenv("RECOMAMP_METRICS__LISTEN", f"127.0.0.1:{port}")
    monkeypatch.setenv("RECOMAMP_METRICS__REFRESH_SECONDS", "0.2")
    path = write_world_config(write_config, dsn, simulator)
    daemon = wiring.daemon(load_config(path), config_path=path)
    task = asyncio.create_task(daemon.run())
    base = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            return (await get(f"{base}/healthz"))[0] == 200
        return False

    try:
        await wait_until(answers, what="/healthz to answer")
        yield daemon, base, path
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def seed_two_users(dsn: str, box: SecretBox, simulator: AmcSimulator) -> None:
    pool = await create_pool(dsn, size=2, command_timeout=10, connect_timeout=5)
    try:
        ada = await add_tenant(pool, box, simulator, "ada@example.com", "amcA")
        bob = await add_tenant(pool, box, simulator, "bob@example.com", "amcB")
        await add_due_schedule(pool, ada, "ada daily")
        await add_due_schedule(pool, bob, "bob daily")
    finally:
        await pool.close()
    simulator.revoke("bob@example.com")


async def finished(dsn: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT status, error_kind FROM schedule_runs WHERE status <> 'skipped'")
    finally:
        await connection.close()
    return [dict(r) for r in rows]


async def test_metrics_match_the_run_table_and_health_flips_with_postgres(
    own_postgres: OwnPostgres,
    simulator: AmcSimulator,
    box: SecretBox,
    write_config: ConfigWriter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = await migrated_database(own_postgres.admin_dsn)
    await seed_two_users(dsn, box, simulator)
    async with serving(dsn, simulator, write_config, monkeypatch) as (_, base, config_path):

        async def both_finished() -> bool:
            return sorted(r["status"] for r in await finished(dsn)) == ["failed", "succeeded"]

        await wait_until(both_finished, what="a healthy and a failing run to finish")
        status, text = await get(f"{base}/metrics")
        assert status == 200
        found = samples(text)
        for row in await finished(dsn):
            key = (
                "recomamp_runs_finished_total",
                tuple(sorted({"status": row["status"], "error_kind": row["error_kind"] or ""}.items())),
            )
            assert found[key] == 1.0, (key, text)
        assert found[("recomamp_amc_executions_submitted_total", (("amc_instance", "amcA"),))] == 1.0
        assert found[("recomamp_lwa_refresh_attempts_total", (("outcome", "reauth_required"),))] == 1.0
        assert found[("recomamp_runs_in_flight", (("amc_instance", "amcA"),))] == 0.0  # it left again

        async def gauge_says_bob() -> bool:
            return samples((await get(f"{base}/metrics"))[1]).get(("recomamp_users_needing_reauth", ())) == 1.0

        await wait_until(gauge_says_bob, what="the re-authentication gauge")
        assert "bob@example.com" not in text  # labels never carry an email

        # `recomamp status`: bob needs a person, so exit 1; the fields match what happened.
        capsys.readouterr()
        assert await cli(config_path, "status", "--json") == 1
        shown = json.loads(capsys.readouterr().out)
        assert [u["email"] for u in shown["users_needing_reauth_list"]] == ["bob@example.com"]
        assert shown["failures_last_day"] == {"reauth_required": 1}
        assert len(shown["replicas_alive"]) == 1 and shown["replicas_alive"][0]["runs_held"] == 0
        # Keyed by where the instance is served and its id (two regions may share an id).
        assert {key.rsplit("/", 1)[-1]: used for key, used in shown["quota"].items()} == {"amcA": 1}
        assert any("recomamp users authorize bob@example.com" in reason for reason in shown["attention"])
        exit_code = await cli(config_path, "status", f"--config={config_path}")
        captured = capsys.readouterr()
        assert exit_code == 1, captured.err
        screen = captured.out
        assert "needs a person:" in screen and "bob@example.com" in screen

        # Health: both answer from memory; /readyz goes 503 while Postgres is down, and back.
        assert (await get(f"{base}/healthz"))[0] == 200
        assert (await get(f"{base}/readyz"))[0] == 200
        await asyncio.to_thread(own_postgres.stop)
        try:

            async def not_ready() -> bool:
                return (await get(f"{base}/readyz"))[0] == 503

            await wait_until(not_ready, what="/readyz to say the database is away")
            assert (await get(f"{base}/healthz"))[0] == 200  # alive all the same: no restart for an outage
            assert samples((await get(f"{base}/metrics"))[1])[("recomamp_database_up", ())] == 0.0
        finally:
            await asyncio.to_thread(own_postgres.start)

        async def ready() -> bool:
            return (await get(f"{base}/readyz"))[0] == 200

        await wait_until(ready, seconds=30, what="/readyz to come back")


async def test_status_says_nothing_needs_a_person_when_all_is_well_and_when_no_replica_is_alive(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await add_tenant(pool, box, simulator, "cy@example.com", "amcC")
    path = write_world_config(write_config, db_dsn, simulator)
    await pool.execute("DELETE FROM replicas")
    capsys.readouterr()
    assert await cli(path, "status", f"--config={path}") == 1
    assert "no replica is alive" in capsys.readouterr().out
    await pool.execute(
        "INSERT INTO replicas (name, hostname, pid, version, runs_held) VALUES ('r1', 'h', 1, '0.2.0', 0)"
    )
    assert await cli(path, "status", f"--config={path}") == 0
    assert "nothing needs a person" in capsys.readouterr().out


@needs_prometheus
def test_the_shipped_alert_rules_pass_promtool() -> None:
    for command in (
        ["promtool", "check", "rules", "recomamp-rules.yml"],
        ["promtool", "test", "rules", "recomamp-rules.test.yml"],
    ):
        result = subprocess.run(command, cwd=RULES, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


@needs_prometheus
async def test_a_real_prometheus_scrapes_the_daemon_with_the_rules_loaded(
    own_postgres: OwnPostgres,
    simulator: AmcSimulator,
    box: SecretBox,
    write_config: ConfigWriter,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    prometheus_dir = tmp_path / "prometheus"
    prometheus_dir.mkdir()
    dsn = await migrated_database(own_postgres.admin_dsn)
    await seed_two_users(dsn, box, simulator)
    async with serving(dsn, simulator, write_config, monkeypatch) as (_, base, _path):
        target = base.removeprefix("http://")
        shutil.copy(RULES / "recomamp-rules.yml", prometheus_dir / "recomamp-rules.yml")
        (prometheus_dir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [recomamp-rules.yml]\n"
            f"scrape_configs:\n  - job_name: recomamp\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        port = free_port()
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={prometheus_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prometheus_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{port}/api/v1"

        async def query(expression: str) -> list[dict[str, Any]]:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{api}/query", params={"query": expression}) as response,
            ):
                body = await response.json()
            return list(body["data"]["result"])

        async def answers(expression: str, value: str) -> bool:
            with contextlib.suppress(aiohttp.ClientError, KeyError):
                result = await query(expression)
                return bool(result) and result[0]["value"][1] == value
            return False

        try:
            await wait_until(lambda: answers('up{job="recomamp"}', "1"), seconds=30, what="Prometheus to scrape us")
            await wait_until(
                lambda: answers('sum(recomamp_runs_finished_total{status="failed"})', "1"),
                seconds=30,
                what="the failed run in Prometheus",
            )
            await wait_until(
                lambda: answers("max(recomamp_users_needing_reauth)", "1"), seconds=30, what="the gauge in Prometheus"
            )
            async with aiohttp.ClientSession() as session, session.get(f"{api}/rules") as response:
                groups = (await response.json())["data"]["groups"]
            assert {rule["name"] for group in groups for rule in group["rules"]} >= {
                "RecomampDown",
                "RecomampUsersNeedReauthentication",
                "RecomampDatabaseUnreachable",
            }
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
