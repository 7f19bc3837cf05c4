from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from recomamp.amazon.lwa import LwaClient
from recomamp.config import RetrySettings
from recomamp.crypto import SecretBox
from recomamp.domain.retry import TokenPolicy
from recomamp.sandbox.embedded import FakeSnowflake, start_fakesnow
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services.tokens import TokenService, set_refresh_token
from recomamp.store.db import create_pool

ZERO_WAITS = RetrySettings(
    lwa_server_error_waits=(0.0,),
    lwa_throttle_waits=(0.0,),
    lwa_network_waits=(0.0,),
    amc_waits=(0.0,),
    amc_poll_initial_seconds=0.01,
    amc_poll_max_seconds=0.05,
    snowflake_waits=(0.0,),
)


@pytest.fixture
async def simulator() -> AsyncIterator[AmcSimulator]:
    sim = AmcSimulator(list_page_size=2, url_page_size=2)
    async with sim.serve():
        yield sim


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, size=20, command_timeout=30, connect_timeout=10)
    yield pool
    await pool.close()


@pytest.fixture
def box(token_key: str) -> SecretBox:
    return SecretBox([SecretStr(token_key)])


def make_lwa(http: aiohttp.ClientSession, simulator: AmcSimulator, timeout: float = 5.0) -> LwaClient:
    return LwaClient(
        http,
        token_url=simulator.token_url,
        client_id=simulator.client_id,
        client_secret=SecretStr(simulator.client_secret),
        timeout_seconds=timeout,
    )


def make_token_service(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox, timeout: float = 5.0
) -> TokenService:
    policy = TokenPolicy.from_settings(ZERO_WAITS, refresh_margin_seconds=300)
    return TokenService(pool, make_lwa(http, simulator, timeout), box, policy)


async def add_user(pool: asyncpg.Pool, box: SecretBox, email: str, refresh_token: str | None) -> int:
    async with pool.acquire() as connection:
        user_id: int = await connection.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
        if refresh_token is not None:
            await set_refresh_token(connection, box, user_id, refresh_token)
    return user_id


@pytest.fixture(scope="session")
def fakesnow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSnowflake]:
    """fakesnow in server mode, once per session: the real connector talks to it over HTTP."""
    server = start_fakesnow(log_path=tmp_path_factory.mktemp("fakesnow") / "fakesnow.log")
    yield server
    server.stop()


class OwnPostgres:
    """A Postgres server of this test's own, which the test can stop and start again (an outage)."""

    def __init__(self, data: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self._server = pgserver.get_server(data, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.admin_dsn: str = self._server.get_uri()

    def stop(self) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def cleanup(self) -> None:
        self._server.cleanup()


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    server = OwnPostgres(tmp_path_factory.mktemp("own-postgres"))
    yield server
    server.cleanup()


async def migrated_database(admin_dsn: str, name: str = "recomamp") -> str:
    from recomamp.sandbox.embedded import recreate_database
    from recomamp.store import migrations

    dsn = await recreate_database(admin_dsn, name)
    connection = await asyncpg.connect(dsn)
    try:
        await migrations.migrate_up(connection)
    finally:
        await connection.close()
    return dsn
